//! pollen-operator (placeholder).

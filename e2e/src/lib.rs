//! Pollen's end-to-end harness (placeholder).

//! pollen-edge-node (placeholder).

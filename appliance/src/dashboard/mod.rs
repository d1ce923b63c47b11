//! Dashboard assets (placeholder).

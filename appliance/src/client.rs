//! CLI client (placeholder).

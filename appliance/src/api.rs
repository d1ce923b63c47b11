//! The web API (placeholder).

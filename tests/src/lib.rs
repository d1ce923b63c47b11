//! Helpers for the black-box integration tests.

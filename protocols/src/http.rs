//! http server (work in progress).

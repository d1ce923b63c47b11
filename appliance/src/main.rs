//! The `provbox` command line.
fn main() {}

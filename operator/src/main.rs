//! The operator binary.
#![forbid(unsafe_code)]

fn main() {}

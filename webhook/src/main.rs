//! The webhook binary.
#![forbid(unsafe_code)]

fn main() {}

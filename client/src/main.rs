//! `ordo`: the command-line tool.

fn main() {}

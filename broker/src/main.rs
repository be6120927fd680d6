//! `ordo-broker`: the daemon.

fn main() {}

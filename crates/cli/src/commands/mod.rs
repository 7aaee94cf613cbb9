//! One file per command family: parse the arguments, call the library, print.

pub mod bench;
pub mod capacity;
pub mod compress;
pub mod report;
pub mod sweep;

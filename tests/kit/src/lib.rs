//! The test kit that the end-to-end tests (`capstats-tests`), the bench
//! (`xtask-bench`) and the crates' own integration tests share, kept to `anyhow` and
//! `libc` so that `cargo xtask` builds before libpcap-dev is installed:
//!
//! - [`launch`]: starting and stopping `capstats -d`, the one launcher.
//! - [`corpus`]: where the test corpus is.

pub mod corpus;
pub mod launch;

//! The integration tests of this crate, as one test binary: one link instead of one per
//! file, and the files' tests run side by side. Each file is a module; its tests are named
//! `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).
//! Apart, in binaries of their own: flow.rs (it measures this process's resident memory) and filter_scheduling.rs (it loads both cores on purpose).

#[path = "../common/mod.rs"]
mod common;

mod bounds;
mod config_doc;
mod config_samples;
mod e2e;
mod groups;
mod limits;
mod operations;
mod processors;
mod replication;
mod standalone;
mod storage;
mod trail;
mod transactions;

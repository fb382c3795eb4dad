//! The integration tests of this crate, as one test binary: one link instead of one per
//! file, and the files' tests run side by side. Each file is a module; its tests are named
//! `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).
//! Apart, in binaries of their own: kill.rs (it re-runs its own binary as the writer it kills).

#[path = "../common/mod.rs"]
mod common;

mod basic;
mod disk_full;
mod fuzz_regressions;
mod recovery;
mod replica;
mod retention;
mod sync_failure;
mod topic_deletes;

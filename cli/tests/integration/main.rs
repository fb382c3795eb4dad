//! The integration tests of this crate, as one test binary: one link instead of one per
//! file, and the files' tests run side by side. Each file is a module; its tests are named
//! `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod admin;
mod bench;
mod cli;
mod cluster;
mod console;
mod consume;
mod filter;
mod filter_new;
mod tls;
mod transaction;

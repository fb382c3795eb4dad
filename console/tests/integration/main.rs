//! The integration tests of this crate, as one test binary: one link instead of one per
//! file, and the files' tests run side by side. Each file is a module; its tests are named
//! `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).
//! Apart, in binaries of their own: preview.rs (it counts this process's filter threads).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod browser;
mod trail;

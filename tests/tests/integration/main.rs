//! The end-to-end tests that run in this process, as one test binary: one link instead of
//! one per file, and the files' tests run side by side. Each file is a module; its tests are
//! named `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).
//! Apart, in binaries of their own: `cluster/`, `crash/`, `rocketmq/` and `transactions/`,
//! whose binaries re-run themselves as broker processes (`weir_tests::child`).

mod acl;
mod filter_engines;
mod filters;
mod group_delete;
mod metrics;
mod tls;

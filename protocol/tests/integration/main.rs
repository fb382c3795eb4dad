//! The integration tests of this crate, as one test binary: one link instead of one per
//! file, and the files' tests run side by side. Each file is a module; its tests are named
//! `<file>::<test>` (`cargo test --test integration <file>::` runs one file's).

mod bounds;
mod metrics_http;
mod net;

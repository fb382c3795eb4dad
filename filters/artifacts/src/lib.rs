//! The workspace's filter components, built for `wasm32-wasip2` (profile `filter`) by this
//! crate's build script with a nested cargo, for tests and benchmarks. Nothing prebuilt is
//! committed: building this crate builds them.
//!
//! Each constant is the absolute path of one component, e.g. [`KEEP_ALL`]; [`read`] loads
//! one. [`ALL`] lists every component built, by constant name. A filter whose folder does
//! not exist yet has no constant; one that could not be built for lack of a tool has a
//! constant that names the reason (see [`NOT_BUILT`]), and [`read`] panics with it.
//!
//! ```no_run
//! let bytes = weir_filter_artifacts::read(weir_filter_artifacts::KEEP_ALL);
//! assert!(bytes.starts_with(b"\0asm"));
//! ```

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// How the constant of a component that could not be built starts; the rest says why.
pub const NOT_BUILT_PREFIX: &str = "not built: ";

/// The bytes of the component at `path` (one of this crate's constants).
///
/// # Panics
///
/// When the component was not built or cannot be read: this crate serves tests.
pub fn read(path: &str) -> Vec<u8> {
    if path.starts_with(NOT_BUILT_PREFIX) {
        panic!("filter component {path}");
    }
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read filter component {path}: {e} (weir-filter-artifacts' build script \
             builds it; `cargo build -p weir-filter-artifacts -vv` shows that build)"
        )
    })
}

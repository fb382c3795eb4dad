//! What a filter may import, declared here and nowhere else: [`PROVIDED`] interfaces are
//! linked to the broker's host, [`STUBBED`] ones (which standard libraries import whether
//! or not they are used) to functions that trap, and anything else is refused at upload,
//! every offending import named with the reason. Also checks that the filter interface is
//! exported with the right types.
//!
//! Invariant: a component that links has no import outside these two lists, and the only
//! capabilities it gets are the host's log and a per-process random seed.
//!
//! JavaScript and Python filters need nothing more: their engines are built with every
//! WASI feature off, so their components import only `weir:filter/host` (and its types).
//! componentize-js runs with `--disable stdio random clocks http fetch-event` (then
//! `Math.random` is deterministic, `Date.now` is fixed and timers throw); componentize-py
//! with `--stub-wasi`, which replaces its WASI imports by trapping stubs inside the
//! component (its random seed is the one baked in at build time). `filters/artifacts/
//! engines.rs` builds them so. Deliberately not provided for them, even as harmless
//! deterministic versions: `wasi:clocks` (a filter that reads a clock decides differently
//! on a replay; it has the message's timestamps), `wasi:random/random` (a filter has no
//! use for secure randomness), `wasi:filesystem`, `wasi:sockets` and real environment
//! variables. A component built with those features on names them all at upload.

use std::hash::Hasher;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::engine::FilterAbi;
use super::guest::GuestState;
use super::{CompiledFilter, FilterError, FilterRuntime, bindings, packed_bindings};

/// The interfaces a filter exports, one of the two.
const FILTER_INTERFACE: &str = "weir:filter/filter@0.1.0";
const PACKED_FILTER_INTERFACE: &str = "weir:filter/packed-filter@0.1.0";

/// Imports a filter may have that the broker provides.
const PROVIDED: &[&str] = &[
    "weir:filter/host",
    "weir:filter/types",
    "wasi:random/insecure-seed",
];

/// WASI interfaces that Rust's (and others') standard library imports whether or not the
/// filter uses them: linked to functions that trap if ever called. Anything not here or in
/// [`PROVIDED`] (file system, sockets, clocks, HTTP, ...) is refused at upload.
const STUBBED: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// The linker every filter starts from: the broker's host interfaces
/// (`weir:filter/host`, `weir:filter/types`).
pub(super) fn host_linker(engine: &Engine) -> Result<Linker<GuestState>, FilterError> {
    let mut linker = Linker::<GuestState>::new(engine);
    bindings::MessageFilter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        &mut linker,
        |s| s,
    )
    .map_err(|e| FilterError::Runtime(format!("linking the host interface: {e}")))?;
    Ok(linker)
}

impl FilterRuntime {
    /// Checks imports against what a filter may use, stubs the harmless ones, links, and
    /// checks that the filter interface is exported with the right types.
    pub(super) fn link(&self, component: Component) -> Result<CompiledFilter, FilterError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        // Every forbidden import is named, not just the first: a filter that opens a socket
        // also imports clocks (for timeouts), and "no clocks" alone would hide the point.
        let mut forbidden: Vec<&str> = Vec::new();
        let mut whys: Vec<&str> = Vec::new();
        for (name, _) in ty.imports(engine) {
            let unversioned = name.split('@').next().unwrap_or(name);
            if PROVIDED.contains(&unversioned) || STUBBED.contains(&unversioned) {
                continue;
            }
            let why = if unversioned.starts_with("wasi:filesystem") {
                "filters get no file system"
            } else if unversioned.starts_with("wasi:sockets")
                || unversioned.starts_with("wasi:http")
            {
                "filters get no network"
            } else if unversioned.starts_with("wasi:clocks") {
                "filters get no clocks (decide on the message's timestamps)"
            } else {
                "filters may import only weir:filter/host (and WASI stdio, which is stubbed)"
            };
            forbidden.push(name);
            if !whys.contains(&why) {
                whys.push(why);
            }
        }
        if !forbidden.is_empty() {
            return Err(FilterError::ForbiddenImport {
                import: forbidden.join("`, `"),
                why: whys.join("; "),
            });
        }
        let mut linker = self.inner.linker.clone();
        for (name, _) in ty.imports(engine) {
            if name.split('@').next() == Some("wasi:random/insecure-seed") {
                // Under the exact name imported: the linker's semver matching lets a newer
                // definition serve an older import, not the reverse.
                define_insecure_seed(&mut linker, name)?;
            }
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| FilterError::Runtime(format!("stubbing imports: {e}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            FilterError::WrongWorld(format!("its imports do not match weir:filter@0.1: {e:#}"))
        })?;
        // Either interface, checked with its types; the packed one when both are there.
        let (abi, interface) = if component
            .get_export_index(None, PACKED_FILTER_INTERFACE)
            .is_some()
        {
            packed_bindings::PackedMessageFilterPre::new(pre.clone()).map_err(|e| {
                FilterError::WrongWorld(format!(
                    "its {PACKED_FILTER_INTERFACE} does not match world packed-message-filter of wit/filter.wit: {e:#}"
                ))
            })?;
            (FilterAbi::Packed, PACKED_FILTER_INTERFACE)
        } else {
            bindings::MessageFilterPre::new(pre.clone()).map_err(|e| {
                FilterError::WrongWorld(format!(
                    "it must export {FILTER_INTERFACE} (world message-filter of wit/filter.wit) or {PACKED_FILTER_INTERFACE} (world packed-message-filter): {e:#}"
                ))
            })?;
            (FilterAbi::Records, FILTER_INTERFACE)
        };
        let iface = component
            .get_export_index(None, interface)
            .ok_or_else(|| FilterError::WrongWorld(format!("it does not export {interface}")))?;
        let filter_fn = component
            .get_export_index(Some(&iface), "filter")
            .ok_or_else(|| {
                FilterError::WrongWorld(format!("{interface} has no `filter` function"))
            })?;
        Ok(CompiledFilter {
            pre,
            filter_fn,
            abi,
        })
    }
}

/// Rust's `HashMap` seeds itself from `wasi:random/insecure-seed`; a per-process random
/// seed is all it needs, and it gives the filter no other capability.
fn define_insecure_seed(linker: &mut Linker<GuestState>, name: &str) -> Result<(), FilterError> {
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h =
            std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
        h.write_u64(0x5eed);
        let a = h.finish();
        (a, a.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)
    });
    linker
        .instance(name)
        .and_then(|mut i| i.func_wrap("insecure-seed", move |_, (): ()| Ok((seed,))))
        .map_err(|e| FilterError::Runtime(format!("linking {name}: {e}")))
}

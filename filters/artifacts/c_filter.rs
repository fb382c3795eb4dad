//! Builds the C filter `filters/c-tag-prefix/filter.c` into a WebAssembly component, from
//! a build script. Used by the artifacts crate's `build.rs`; std plus these
//! build-dependencies only:
//!
//! ```toml
//! wit-bindgen-c = "0.63"     # C bindings for wit/filter.wit
//! wit-bindgen-core = "0.63"  # `Files`, and `wit_parser` re-exported
//! wit-component = "0.262"    # core module + component-type section -> component
//! wasmparser = { version = "0.262", default-features = false, features = ["std"] }  # import check
//! ```
//!
//! All but wit-bindgen-c are already in the workspace's host graph (through
//! wit-bindgen-rust-macro), with these versions and features, so they are not rebuilt.
//!
//! Steps:
//! 1. generate `message_filter.{h,c}` and `message_filter_component_type.o` from `wit/`
//!    with wit-bindgen-c (into `out_dir`, never committed);
//! 2. compile and link them with `filter.c` using clang for `wasm32-wasi` (a WASI
//!    preview 1 *reactor* core module, against the wasi-libc sysroot; the filter uses
//!    only malloc and string functions, so the module imports no WASI function);
//! 3. check the core module imports nothing but `weir:filter/host` (a WASI import would
//!    need the preview1 adapter, which is not on any package registry);
//! 4. wrap it into a component with wit-component's `ComponentEncoder`.
//!
//! The toolchain comes from Debian: `scripts/install-c-toolchain` (clang, lld, wasi-libc,
//! libclang-rt-dev-wasm32). `WEIR_CLANG` names a clang to use instead of searching
//! `clang`, `clang-19`, `clang-16`, `clang-14` on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The filter's directory, relative to the workspace root.
const C_FILTER_DIR: &str = "filters/c-tag-prefix";
/// The only core import module the filter may have.
const HOST_IMPORT: &str = "weir:filter/host@0.1.0";
const INSTALL_HINT: &str = "install it with scripts/install-c-toolchain \
     (apt-get install clang lld wasi-libc libclang-rt-dev-wasm32)";

/// Builds `filters/c-tag-prefix` into `out_dir/c-tag-prefix.wasm` (a component of world
/// `weir:filter/message-filter`) and returns that path. Intermediate files go to
/// `out_dir/c-tag-prefix/`. Prints `cargo:rerun-if-...` lines for its inputs (the C
/// folder, `wit/`, `WEIR_CLANG`); after a failure, one that reruns the build script on
/// every build until the filter builds (e.g. once the toolchain is installed).
///
/// Errs (never panics) when the toolchain is missing or a step fails, so the caller can
/// decide whether that is fatal: the first line says why and how to fix it, any further
/// lines carry the command and the tool's output.
pub fn build_c_filter(workspace: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let src_dir = workspace.join(C_FILTER_DIR);
    println!("cargo:rerun-if-changed={}", src_dir.display());
    // The one copy of the WIT is the SDK's (`wit/` at the root links to it).
    let wit = workspace.join("filter-sdk").join("wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    println!("cargo:rerun-if-env-changed=WEIR_CLANG");
    let work = out_dir.join("c-tag-prefix");
    let result = build(&src_dir, &wit, &work, out_dir);
    if result.is_err() {
        // Watch a file that never exists: cargo then reruns the build script on every
        // build, so installing the toolchain later is picked up without `cargo clean`.
        println!(
            "cargo:rerun-if-changed={}",
            work.join("retry-until-built").display()
        );
    }
    result
}

fn build(src_dir: &Path, wit_dir: &Path, work: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let source = src_dir.join("filter.c");
    std::fs::create_dir_all(work).map_err(|e| format!("creating {}: {e}", work.display()))?;

    // 1. Bindings.
    let generated = generate_bindings(wit_dir, work)?;

    // 2. Compile + link.
    let clang = find_clang()?;
    let core_path = work.join("filter.core.wasm");
    let mut cmd = Command::new(&clang);
    cmd.arg("--target=wasm32-wasi")
        .arg("-mexec-model=reactor")
        .arg("-O2")
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Wextra")
        .arg("-I")
        .arg(work)
        .arg("-o")
        .arg(&core_path)
        .arg(&source)
        .args(&generated)
        // Keeps the `component-type:*` custom section; drops DWARF.
        .arg("-Wl,--strip-debug");
    let out = cmd
        .output()
        .map_err(|e| format!("running {clang:?}: {e}; {INSTALL_HINT}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("unable to execute command")
            || (stderr.contains("wasm-ld") && stderr.contains("not found"))
        {
            "wasm-ld is missing (Debian package lld)"
        } else if stderr.contains("stdlib.h")
            || stderr.contains("string.h")
            || stderr.contains("-lc")
        {
            "the wasm32-wasi sysroot is missing (Debian package wasi-libc)"
        } else if stderr.contains("libclang_rt.builtins-wasm32") {
            "the wasm32 compiler-rt builtins are missing (Debian package libclang-rt-dev-wasm32)"
        } else {
            "see clang's output"
        };
        return Err(format!(
            "compiling {} with {clang} for wasm32-wasi failed ({hint}); {INSTALL_HINT}\n{cmd:?}\n{stderr}",
            source.display()
        ));
    }
    let core =
        std::fs::read(&core_path).map_err(|e| format!("reading {}: {e}", core_path.display()))?;

    // 3. Imports.
    check_core_imports(&core)?;

    // 4. Component.
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("making a component of {}: {e:#}", core_path.display()))?;
    let component_path = out_dir.join("c-tag-prefix.wasm");
    std::fs::write(&component_path, component)
        .map_err(|e| format!("writing {}: {e}", component_path.display()))?;
    Ok(component_path)
}

/// Writes wit-bindgen-c's output for world `message-filter` into `work`; returns the files
/// to compile/link (`.c` and the `_component_type.o` carrying the component type).
fn generate_bindings(wit_dir: &Path, work: &Path) -> Result<Vec<PathBuf>, String> {
    use wit_bindgen_core::wit_parser::Resolve;

    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit_dir)
        .map_err(|e| format!("parsing {}: {e:#}", wit_dir.display()))?;
    let world = resolve
        .select_world(&[pkg], Some("message-filter"))
        .map_err(|e| format!("world message-filter in {}: {e:#}", wit_dir.display()))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| format!("wit-bindgen-c: {e:#}"))?;

    let mut to_build = Vec::new();
    for (name, contents) in files.iter() {
        let path = work.join(name);
        // Rewrite only on change, so mtimes (and anything watching them) stay put.
        if std::fs::read(&path).ok().as_deref() != Some(contents) {
            std::fs::write(&path, contents)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        if name.ends_with(".c") || name.ends_with(".o") {
            to_build.push(path);
        }
    }
    if to_build.len() != 2 {
        return Err(format!(
            "wit-bindgen-c produced unexpected files: {to_build:?}"
        ));
    }
    Ok(to_build)
}

/// `WEIR_CLANG`, else the first of `clang`, `clang-19`, `clang-16`, `clang-14` that runs.
fn find_clang() -> Result<String, String> {
    if let Ok(c) = std::env::var("WEIR_CLANG")
        && !c.is_empty()
    {
        return Ok(c);
    }
    for c in ["clang", "clang-19", "clang-16", "clang-14"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c.to_owned());
        }
    }
    Err(format!(
        "clang with the wasm32-wasi target is not installed (needed for the C filter {C_FILTER_DIR}); {INSTALL_HINT}"
    ))
}

/// Errs unless every import of the core module is a function of `weir:filter/host`.
fn check_core_imports(core: &[u8]) -> Result<(), String> {
    let mut bad = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        let payload = payload.map_err(|e| format!("reading the C filter's core module: {e}"))?;
        if let wasmparser::Payload::ImportSection(section) = payload {
            for import in section.into_imports() {
                let import = import.map_err(|e| format!("reading the C filter's imports: {e}"))?;
                if import.module != HOST_IMPORT {
                    bad.push(format!("{}::{}", import.module, import.name));
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the C filter's core module imports {} besides {HOST_IMPORT}; a WASI import would need \
             the wasi_snapshot_preview1 adapter, which is not available from any registry: \
             keep the filter to malloc and string functions (no stdio, clocks, files)",
            bad.join(", ")
        ))
    }
}

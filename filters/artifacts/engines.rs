//! Builds the JavaScript (`filters/js`) and Python (`filters/python`) filters into
//! WebAssembly components, from a build script. Used by the artifacts crate's `build.rs`;
//! std only.
//!
//! - JavaScript: componentize-js (npm `@bytecodealliance/componentize-js`, pinned by
//!   `filters/js/package-lock.json`, installed by `npm ci --prefix filters/js`), run as
//!   `node node_modules/.bin/componentize-js <file>.js --wit wit -n message-filter
//!   --disable stdio random clocks http fetch-event`: every WASI feature of the engine is
//!   off, so the component imports only `weir:filter/host`.
//! - Python: componentize-py (PyPI, pinned by `filters/python/requirements.txt`, installed
//!   into `filters/python/target/venv`), run as `componentize-py -d wit -w message-filter
//!   componentize --stub-wasi -p filters/python <module>`: WASI imports are replaced by
//!   trapping stubs inside the component, so it too imports only `weir:filter/host`.
//!
//! `scripts/test` installs both. A missing tool is an `Err` saying how to install it (the
//! caller turns it into a `not built:` constant, so only these filters' tests fail).
//! `WEIR_COMPONENTIZE_JS` / `WEIR_COMPONENTIZE_PY` name other executables.

use std::path::{Path, PathBuf};
use std::process::Command;

const JS_DIR: &str = "filters/js";
const PY_DIR: &str = "filters/python";
const JS_HINT: &str = "install it with `npm ci --prefix filters/js` (scripts/test does)";
const PY_HINT: &str = "install it with `python3 -m venv filters/python/target/venv && \
     filters/python/target/venv/bin/pip install -r filters/python/requirements.txt` \
     (scripts/test does)";

/// Prints what reruns the build script for these filters: their sources, the pins, and
/// the installed tools (an install changes them). Not the folders: `node_modules` and the
/// venv are large, and scanning them on every build would be slow.
pub fn rerun_if_changed(workspace: &Path) {
    for f in [
        "filters/js/weir-filter.js",
        "filters/js/package-lock.json",
        "filters/js/node_modules/.package-lock.json",
        "filters/python/weir_filter/__init__.py",
        "filters/python/requirements.txt",
        "filters/python/target/venv/installed-requirements.txt",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=WEIR_COMPONENTIZE_JS");
    println!("cargo:rerun-if-env-changed=WEIR_COMPONENTIZE_PY");
}

/// Builds `filters/js/<source>` into `out_dir/js-<stem>.wasm`.
pub fn build_js(workspace: &Path, out_dir: &Path, source: &str) -> Result<PathBuf, String> {
    let dir = workspace.join(JS_DIR);
    let src = dir.join(source);
    println!("cargo:rerun-if-changed={}", src.display());
    let tool = std::env::var_os("WEIR_COMPONENTIZE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("node_modules/@bytecodealliance/componentize-js/src/cli.js"));
    if !tool.is_file() {
        return Err(format!(
            "componentize-js is not installed (needed for the JavaScript filter {JS_DIR}/{source}): {JS_HINT}"
        ));
    }
    let stem = source.trim_end_matches(".js");
    let out = out_dir.join(format!("js-{stem}.wasm"));
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg(&tool)
        .arg(&src)
        .arg("--wit")
        .arg(workspace.join("wit"))
        .args(["--world-name", "message-filter", "--disable"])
        .args(["stdio", "random", "clocks", "http", "fetch-event"])
        .arg("--out")
        .arg(&out);
    run(cmd, &out, "componentize-js", JS_HINT)
}

/// Builds the module `filters/python/<module>.py` into `out_dir/py-<module>.wasm`.
pub fn build_py(workspace: &Path, out_dir: &Path, module: &str) -> Result<PathBuf, String> {
    let dir = workspace.join(PY_DIR);
    println!(
        "cargo:rerun-if-changed={}",
        dir.join(format!("{module}.py")).display()
    );
    let tool = std::env::var_os("WEIR_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target/venv/bin/componentize-py"));
    if !tool.is_file() {
        return Err(format!(
            "componentize-py is not installed (needed for the Python filter {PY_DIR}/{module}.py): {PY_HINT}"
        ));
    }
    let out = out_dir.join(format!("py-{module}.wasm"));
    let mut cmd = Command::new(&tool);
    cmd.current_dir(&dir)
        // No __pycache__ in the source folder (it would rerun this script).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIRTUAL_ENV")
        .arg("-d")
        .arg(workspace.join("wit"))
        .args(["-w", "message-filter", "componentize", "--stub-wasi", "-p"])
        .arg(&dir)
        .arg(module)
        .arg("-o")
        .arg(&out);
    run(cmd, &out, "componentize-py", PY_HINT)
}

fn run(mut cmd: Command, out: &Path, tool: &str, hint: &str) -> Result<PathBuf, String> {
    let shown = format!("{cmd:?}");
    eprintln!("running: {shown}");
    let res = cmd
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}; {hint}\n{shown}"))?;
    if !res.status.success() || !out.is_file() {
        return Err(format!(
            "{tool} failed ({}): {}\n{shown}\n{}{}",
            res.status,
            String::from_utf8_lossy(&res.stderr)
                .lines()
                .last()
                .unwrap_or_default(),
            String::from_utf8_lossy(&res.stderr),
            String::from_utf8_lossy(&res.stdout)
        ));
    }
    Ok(out.to_path_buf())
}

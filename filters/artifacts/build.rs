//! Builds the workspace's filter components for `wasm32-wasip2` and writes
//! `$OUT_DIR/artifacts.rs`: one `pub const NAME: &str = "<absolute path of the .wasm>";`
//! per component, plus `ALL` (every one built) and `NOT_BUILT` (skipped, with why).
//!
//! The Rust filters are built by one nested cargo,
//! `$CARGO build --target wasm32-wasip2 --profile filter -p <package>...`, into its own
//! target directory (`<workspace>/target/filters`, or `$CARGO_TARGET_DIR/filters`) so that
//! it never waits for the lock of the build that runs this script. Nothing prebuilt is
//! committed: a clean clone builds them here.
//!
//! Components built some other way (the C filter, the JavaScript and Python filters of
//! `engines.rs`) are added in `main`: one function that returns the `.wasm` path, one line
//! that adds it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use std::{env, fs};

#[path = "c_filter.rs"]
mod c_filter;
#[path = "engines.rs"]
mod engines;

/// The Rust filter packages: folder (relative to the workspace root), constant name. A
/// folder without a `Cargo.toml` (a filter still being written) is skipped. Each must be a
/// workspace member with `crate-type = ["cdylib", ..]`.
const RUST_FILTERS: &[(&str, &str)] = &[
    ("filters/keep-all", "KEEP_ALL"),
    ("filters/sql92", "SQL92"),
    ("filters/json-field", "JSON_FIELD"),
    ("filters/key-sample", "KEY_SAMPLE"),
    ("filters/body-regex", "BODY_REGEX"),
    ("filters/fixtures/hostile", "HOSTILE"),
    ("filters/fixtures/other-world", "OTHER_WORLD"),
    ("filters/fixtures/sneaky", "SNEAKY"),
];

const WASM_TARGET: &str = "wasm32-wasip2";
/// `[profile.filter]` in the workspace's `Cargo.toml`.
const PROFILE: &str = "filter";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("the artifacts crate lives at <workspace>/filters/artifacts")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    let mut components = Components::default();

    build_rust_filters(&workspace, &mut components);

    // Components built by other means: a function returning the `.wasm`'s path (or why
    // it could not be built). `add_or_skip` turns an `Err` into a cargo warning and a
    // constant holding the reason, which `read` panics with: a machine without clang still
    // builds everything else, and the C filter's test fails saying why.
    components.add_or_skip(
        "C_TAG_PREFIX",
        c_filter::build_c_filter(&workspace, &out_dir),
    );

    // The JavaScript and Python examples (componentize-js, componentize-py; scripts/test
    // installs them): the same property filter as SQL92 and body filter as JSON_FIELD.
    engines::rerun_if_changed(&workspace);
    for (name, source) in [("JS_SQL92", "sql92.js"), ("JS_JSON_FIELD", "json-field.js")] {
        components.add_or_skip(name, engines::build_js(&workspace, &out_dir, source));
    }
    for (name, module) in [
        ("PY_SQL92", "sql92_filter"),
        ("PY_JSON_FIELD", "json_field_filter"),
    ] {
        components.add_or_skip(name, engines::build_py(&workspace, &out_dir, module));
    }

    components.write(&out_dir.join("artifacts.rs"));
}

/// Builds every Rust filter of [`RUST_FILTERS`] whose folder exists with one nested cargo.
fn build_rust_filters(workspace: &Path, components: &mut Components) {
    // Inputs shared by every filter. Not `filters/` as a whole: cargo would scan the
    // JavaScript tools' node_modules and the Python venv under it on every build.
    // `filter-sdk` holds the WIT (`filter-sdk/wit`; `wit/` links to it).
    for input in ["filter-sdk", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    let mut packages = Vec::new();
    for &(dir, name) in RUST_FILTERS {
        let folder = workspace.join(dir);
        let manifest = folder.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", folder.display());
        let (package, lib) = package_and_lib(&manifest);
        packages.push((name, package, lib));
    }
    if packages.is_empty() {
        return;
    }

    ensure_wasm_target();
    let target_dir = nested_target_dir(workspace);
    let mut cmd = nested_cargo();
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    for (_, package, _) in &packages {
        cmd.args(["-p", package]);
    }
    run(&mut cmd, "building the filter components");

    let wasm_dir = target_dir.join(WASM_TARGET).join(PROFILE);
    for (name, _, lib) in packages {
        components.add(name, wasm_dir.join(format!("{lib}.wasm")));
    }
}

/// The package name and the library's file stem of a filter's `Cargo.toml`.
fn package_and_lib(manifest: &Path) -> (String, String) {
    let text = fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", manifest.display()));
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{}: no [package] name", manifest.display()))
        .to_owned();
    let lib = doc.get("lib");
    let cdylib = lib
        .and_then(|l| l.get("crate-type"))
        .and_then(toml::Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    assert!(
        cdylib,
        "{}: a filter needs `[lib] crate-type = [\"cdylib\"]` to build a component",
        manifest.display()
    );
    let stem = lib
        .and_then(|l| l.get("name"))
        .and_then(toml::Value::as_str)
        .map_or_else(|| package.replace('-', "_"), str::to_owned);
    (package, stem)
}

/// `<workspace>/target/filters`, or `$CARGO_TARGET_DIR/filters` when that is absolute.
fn nested_target_dir(workspace: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("filters"),
        _ => workspace.join("target").join("filters"),
    }
}

/// `$CARGO`, cleaned of what cargo and the user set for *this* build that would change or
/// break a wasm build of other packages.
fn nested_cargo() -> Command {
    /// Removed by exact name.
    const VARS: &[&str] = &[
        // Flags meant for the host (`-C target-cpu=native`, coverage, sanitizers).
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        // The nested build chooses its own target and target directory.
        "CARGO_TARGET_DIR",
        // `cargo clippy` runs clippy-driver this way (with its `-D warnings`); `cargo
        // miri`, coverage tools and caches hook in here too.
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        // What cargo tells this build script about its own unit; the nested cargo tells
        // its build scripts (cc, ...) their own, but only what applies to them.
        "OUT_DIR",
        "TARGET",
        "HOST",
        "OPT_LEVEL",
        "DEBUG",
        "PROFILE",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
    ];
    /// Removed by prefix: profile overrides (`[profile.filter]` inherits `release`),
    /// `build.*` config (target, target-dir, rustflags, wrappers), and this package's
    /// build-script environment.
    const PREFIXES: &[&str] = &[
        "CARGO_PROFILE_",
        "CARGO_BUILD_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "DEP_",
    ];
    // Kept on purpose: `CARGO_MAKEFLAGS` (the nested cargo joins this build's jobserver,
    // so the two together stay within `-j`), `CARGO_HOME`, `RUSTUP_TOOLCHAIN` (same
    // toolchain), `RUSTC` (the compiler cargo resolved), network and registry settings,
    // and `CARGO_TARGET_WASM32_WASIP2_*` (the user's settings for this very target).
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if VARS.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
    if env::var_os("CARGO_CFG_MIRI").is_some() {
        // Miri's `RUSTC` is its own driver, not a compiler for wasm.
        cmd.env_remove("RUSTC");
    }
    cmd
}

/// Installs the `wasm32-wasip2` standard library with rustup when it is missing; panics
/// saying how to install it when that is impossible.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let installed = || {
        Command::new(&rustc)
            .args(["--print", "target-libdir", "--target", WASM_TARGET])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| fs::read_dir(String::from_utf8_lossy(&o.stdout).trim()).ok())
            .is_some_and(|mut dir| {
                dir.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
            })
    };
    if installed() {
        return;
    }
    let fix = format!(
        "the Rust target {WASM_TARGET} is not installed, and the filter components need it: \
         run `rustup target add {WASM_TARGET}` (without rustup, install the {WASM_TARGET} \
         standard library for {rustc:?} the way that compiler was installed)"
    );
    // `RUSTUP_TOOLCHAIN`, set by the rustup proxy, makes this the toolchain in use.
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", WASM_TARGET]);
    eprintln!("{WASM_TARGET} missing; running {cmd:?}");
    match cmd.output() {
        Ok(out) if out.status.success() && installed() => {}
        Ok(out) => panic!(
            "{fix}\n`rustup target add {WASM_TARGET}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{fix}\n(could not run rustup: {e})"),
    }
}

/// Runs `cmd` with its output captured: on success its stderr goes to this script's
/// stderr (`cargo build -vv` shows it); on failure the panic message carries it.
fn run(cmd: &mut Command, what: &str) {
    // The program and its arguments (`{cmd:?}` would list every variable removed too).
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("running: {shown}");
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {shown}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "{what} failed ({status}).\ncommand: {shown}\n--- its output ---\n{stderr}{stdout}",
            status = out.status
        );
    }
    eprint!("{stderr}");
    eprintln!("{what}: done in {:.1?}", start.elapsed());
}

/// The components found so far, by constant name.
#[derive(Default)]
struct Components {
    built: Vec<(String, PathBuf)>,
    not_built: Vec<(String, String)>,
}

impl Components {
    /// The component at `path`, as constant `name`. Panics when the file is missing.
    fn add(&mut self, name: &str, path: PathBuf) {
        self.check_name(name);
        assert!(
            path.is_file(),
            "component {name}: {} was not produced",
            path.display()
        );
        self.built.push((name.to_owned(), path));
    }

    /// [`Components::add`], or when `built` is an error (a tool this machine lacks), a
    /// cargo warning and a constant that starts with `not built: ` and says why.
    #[allow(
        dead_code,
        reason = "for components built by other means, e.g. the C filter"
    )]
    fn add_or_skip(&mut self, name: &str, built: Result<PathBuf, String>) {
        match built {
            Ok(path) => self.add(name, path),
            Err(why) => {
                self.check_name(name);
                let first_line = why.lines().next().unwrap_or_default();
                println!("cargo:warning=filter component {name} not built: {first_line}");
                self.not_built.push((name.to_owned(), why));
            }
        }
    }

    fn check_name(&self, name: &str) {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "component constant {name:?} must be SHOUTY_SNAKE_CASE"
        );
        assert!(
            !self.built.iter().any(|(n, _)| n == name)
                && !self.not_built.iter().any(|(n, _)| n == name),
            "component constant {name} given twice"
        );
    }

    /// Writes the constants; leaves the file alone when nothing changed.
    fn write(&self, path: &Path) {
        let mut code = String::from("// @generated by build.rs: the filter components.\n");
        for (name, wasm) in &self.built {
            let wasm = wasm
                .to_str()
                .unwrap_or_else(|| panic!("{} is not UTF-8", wasm.display()));
            code += &format!("/// `{wasm}`\npub const {name}: &str = {wasm:?};\n");
        }
        for (name, why) in &self.not_built {
            code += &format!(
                "/// Not built: {}\npub const {name}: &str = {:?};\n",
                why.lines().next().unwrap_or_default(),
                format!("not built: {why}")
            );
        }
        code += "/// Every component built: constant name, path.\npub const ALL: &[(&str, &str)] = &[\n";
        for (name, _) in &self.built {
            code += &format!("    ({name:?}, {name}),\n");
        }
        code += "];\n/// Components that could not be built: constant name, why.\n\
                 pub const NOT_BUILT: &[(&str, &str)] = &[\n";
        for (name, why) in &self.not_built {
            code += &format!("    ({name:?}, {why:?}),\n");
        }
        code += "];\n";
        if fs::read_to_string(path).ok().as_deref() != Some(code.as_str()) {
            fs::write(path, code).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }
}

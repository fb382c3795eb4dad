//! Writes into `$OUT_DIR` what `weir filter new` embeds besides its templates:
//!
//! - `filter-sdk.Cargo.lock`: the packages the SDK (`filter-sdk`) depends on, with the
//!   versions and checksums of the workspace's `Cargo.lock`, so a generated Rust project
//!   builds with the set this weir was tested with (cargo adds the project's own entries);
//! - `c-bindings/`: wit-bindgen-c's bindings of the SDK's WIT (world `message-filter`),
//!   the same generator and options as the C filter of `filters/artifacts/c_filter.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("cli lives in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let lock = workspace.join("Cargo.lock");
    let wit = workspace.join("filter-sdk").join("wit");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-changed={}", wit.display());

    write_if_changed(
        &out_dir.join("filter-sdk.Cargo.lock"),
        sdk_lock(&lock).as_bytes(),
    );
    c_bindings(&wit, &out_dir.join("c-bindings"));
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(bytes) {
        fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// The lock entries reachable from `weir-filter-sdk`'s dependencies, in lock order.
fn sdk_lock(lock: &Path) -> String {
    let text =
        fs::read_to_string(lock).unwrap_or_else(|e| panic!("reading {}: {e}", lock.display()));
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", lock.display()));
    let packages: Vec<&toml::Table> = doc
        .get("package")
        .and_then(toml::Value::as_array)
        .expect("Cargo.lock has packages")
        .iter()
        .filter_map(toml::Value::as_table)
        .collect();
    let field = |p: &toml::Table, k: &str| {
        p.get(k)
            .and_then(toml::Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let deps = |p: &toml::Table| -> Vec<String> {
        p.get("dependencies")
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // A dependency is written `name` (one version in the lock) or `name version [(source)]`.
    let find = |dep: &str| -> usize {
        let mut parts = dep.split(' ');
        let name = parts.next().unwrap_or(dep);
        let version = parts.next();
        packages
            .iter()
            .position(|p| {
                field(p, "name") == name && version.is_none_or(|v| field(p, "version") == v)
            })
            .unwrap_or_else(|| panic!("Cargo.lock: no package for dependency {dep:?}"))
    };
    let sdk = find("weir-filter-sdk");
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> = deps(packages[sdk]).iter().map(|d| find(d)).collect();
    while let Some(i) = todo.pop() {
        if seen.insert(i) {
            todo.extend(deps(packages[i]).iter().map(|d| find(d)));
        }
    }
    let mut out = String::from(
        "# Written by `weir filter new`: the versions of the SDK's dependencies this weir was\n\
         # built and tested with. Cargo adds this project's own entries on the first build.\n\
         version = 4\n",
    );
    for i in seen {
        let p = packages[i];
        out += &format!(
            "\n[[package]]\nname = {:?}\nversion = {:?}\n",
            field(p, "name"),
            field(p, "version")
        );
        for k in ["source", "checksum"] {
            if p.contains_key(k) {
                out += &format!("{k} = {:?}\n", field(p, k));
            }
        }
        let d = deps(p);
        if !d.is_empty() {
            out += "dependencies = [\n";
            for dep in d {
                out += &format!(" {dep:?},\n");
            }
            out += "]\n";
        }
    }
    out
}

/// wit-bindgen-c's `message_filter.h`, `message_filter.c` and
/// `message_filter_component_type.o` for the WIT in `wit_dir`, into `dir`.
fn c_bindings(wit_dir: &Path, dir: &Path) {
    use wit_bindgen_core::wit_parser::Resolve;

    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit_dir)
        .unwrap_or_else(|e| panic!("parsing {}: {e:#}", wit_dir.display()));
    let world = resolve
        .select_world(&[pkg], Some("message-filter"))
        .unwrap_or_else(|e| panic!("world message-filter in {}: {e:#}", wit_dir.display()));
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .unwrap_or_else(|e| panic!("wit-bindgen-c: {e:#}"));
    let mut names = Vec::new();
    for (name, contents) in files.iter() {
        write_if_changed(&dir.join(name), contents);
        names.push(name.to_owned());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "message_filter.c",
            "message_filter.h",
            "message_filter_component_type.o"
        ],
        "wit-bindgen-c's files changed: update cli/src/filter/new/c.rs"
    );
}

//! The Rust project: a cdylib on `weir-filter-sdk`, with the SDK written into the project.
//!
//! Why vendored: the project must build outside any checkout of weir, and this weir's SDK
//! is the one that matches its brokers' WIT; crates.io serves wit-bindgen, the SDK's only
//! dependency. Invariant: every file of `filter-sdk/` that its build needs is listed in
//! [`SDK`] (a test checks `src/` against the folder), so the vendored copy builds alone.

use super::{File, Project};

/// The SDK crate's files, as they are in this weir's source: project path, contents.
const SDK: &[(&str, &str)] = &[
    (
        "weir-filter-sdk/Cargo.toml",
        include_str!("../../../../filter-sdk/Cargo.toml"),
    ),
    (
        "weir-filter-sdk/README.md",
        include_str!("../../../../filter-sdk/README.md"),
    ),
    (
        "weir-filter-sdk/wit/filter.wit",
        include_str!("../../../../filter-sdk/wit/filter.wit"),
    ),
    (
        "weir-filter-sdk/src/lib.rs",
        include_str!("../../../../filter-sdk/src/lib.rs"),
    ),
    (
        "weir-filter-sdk/src/logging.rs",
        include_str!("../../../../filter-sdk/src/logging.rs"),
    ),
    (
        "weir-filter-sdk/src/message.rs",
        include_str!("../../../../filter-sdk/src/message.rs"),
    ),
    (
        "weir-filter-sdk/src/params.rs",
        include_str!("../../../../filter-sdk/src/params.rs"),
    ),
    (
        "weir-filter-sdk/src/testing.rs",
        include_str!("../../../../filter-sdk/src/testing.rs"),
    ),
    (
        "weir-filter-sdk/src/tests.rs",
        include_str!("../../../../filter-sdk/src/tests.rs"),
    ),
];

/// The versions of the SDK's dependencies this weir was built with (from the workspace's
/// `Cargo.lock`, by `build.rs`), so that the project resolves to a tested set.
const LOCK: &str = include_str!(concat!(env!("OUT_DIR"), "/filter-sdk.Cargo.lock"));

pub(super) fn files(p: &Project) -> Vec<File> {
    let mut files = vec![
        File::text(
            "Cargo.toml",
            p.fill(include_str!("../../../templates/rust/Cargo.toml")),
        ),
        File::text(
            "src/lib.rs",
            p.fill(include_str!("../../../templates/rust/src/lib.rs")),
        ),
        File::text(
            "README.md",
            p.fill(include_str!("../../../templates/rust/README.md")),
        ),
        File::text(".gitignore", "/target\n".to_owned()),
        File::text("Cargo.lock", LOCK.to_owned()),
        File {
            path: "build.sh",
            bytes: p
                .fill(include_str!("../../../templates/rust/build.sh"))
                .into_bytes(),
            executable: true,
        },
    ];
    files.extend(
        SDK.iter()
            .map(|&(path, text)| File::text(path, text.to_owned())),
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_source_is_vendored() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../filter-sdk/src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("weir-filter-sdk/src/{name}");
            assert!(
                SDK.iter().any(|(p, _)| *p == path),
                "filter-sdk/src/{name} is not in SDK (cli/src/filter/new/rust.rs)"
            );
        }
    }

    /// One WIT in the repository: `wit/` links to the SDK's (README and issue texts name
    /// `wit/filter.wit`); should the link ever become a copy, it must not drift.
    #[test]
    fn the_root_wit_is_the_sdks() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sdk = std::fs::read(root.join("filter-sdk/wit/filter.wit")).unwrap();
        assert_eq!(std::fs::read(root.join("wit/filter.wit")).unwrap(), sdk);
        assert_eq!(SDK[2].1.as_bytes(), sdk.as_slice());
    }

    #[test]
    fn the_lock_pins_wit_bindgen() {
        assert!(LOCK.contains("name = \"wit-bindgen\""), "{LOCK}");
        assert!(!LOCK.contains("name = \"weir-"), "{LOCK}");
    }
}

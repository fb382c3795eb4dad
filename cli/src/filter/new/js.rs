//! The JavaScript project: `filter.js` on the SDK `weir-filter.js`, a native test run by
//! `node --test` through `weir-testing.js`, and `build.sh`, which makes the component
//! with componentize-js as pinned by `filters/js/package-lock.json` (the SDK, the testing
//! helper and the lock are this weir's own, embedded as they are in `filters/js/`).

use super::{File, Project};

const SDK: &str = include_str!("../../../../filters/js/weir-filter.js");
const TESTING: &str = include_str!("../../../../filters/js/weir-testing.js");
/// The lock of `filters/js`, whose top-level package name becomes the project's.
const LOCK: &str = include_str!("../../../../filters/js/package-lock.json");

pub(super) fn files(p: &Project) -> Vec<File> {
    let lock = LOCK.replace(
        "\"name\": \"weir-filters-js\"",
        &format!("\"name\": \"{}\"", p.name),
    );
    vec![
        File::text(
            "filter.js",
            p.fill(include_str!("../../../templates/js/filter.js")),
        ),
        File::text(
            "test.mjs",
            p.fill(include_str!("../../../templates/js/test.mjs")),
        ),
        File::text(
            "package.json",
            p.fill(include_str!("../../../templates/js/package.json")),
        ),
        File::text("package-lock.json", lock),
        File::text(
            "README.md",
            p.fill(include_str!("../../../templates/js/README.md")),
        ),
        File::text(".gitignore", "/node_modules\n/*.wasm\n".to_owned()),
        File::text("weir-filter.js", SDK.to_owned()),
        File::text("weir-testing.js", TESTING.to_owned()),
        File::text(
            "wit/filter.wit",
            include_str!("../../../../filter-sdk/wit/filter.wit").to_owned(),
        ),
        File {
            path: "build.sh",
            bytes: p
                .fill(include_str!("../../../templates/js/build.sh"))
                .into_bytes(),
            executable: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project's dependencies are the pins of `filters/js`, which the tests build with.
    #[test]
    fn the_pins_are_filters_js() {
        let ours: serde_json::Value =
            serde_json::from_str(include_str!("../../../templates/js/package.json")).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(include_str!("../../../../filters/js/package.json")).unwrap();
        assert_eq!(ours["dependencies"], theirs["dependencies"]);
        let p = Project {
            name: "region-is".into(),
            ident: "region_is".into(),
        };
        let lock = files(&p)
            .into_iter()
            .find(|f| f.path == "package-lock.json")
            .unwrap();
        let lock = String::from_utf8(lock.bytes).unwrap();
        assert!(!lock.contains("weir-filters-js") && lock.contains("\"region-is\""));
    }
}

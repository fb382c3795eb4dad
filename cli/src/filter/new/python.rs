//! The Python project: `filter.py` on the SDK package `weir_filter/`, a native test run
//! by `python3 -m unittest` through `weir_filter.testing`, and `build.sh`, which makes the
//! component with componentize-py as pinned by `filters/python/requirements.txt` (the
//! SDK and the pin are this weir's own, embedded as they are in `filters/python/`).

use super::{File, Project};

/// `filters/python/requirements.txt`: the pins its comments aside (they speak of weir's tree).
const REQUIREMENTS: &str = include_str!("../../../../filters/python/requirements.txt");

fn requirements() -> String {
    let mut out = String::from("# componentize-py, as the weir that wrote this project pins it.\n");
    for line in REQUIREMENTS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub(super) fn files(p: &Project) -> Vec<File> {
    vec![
        File::text(
            "filter.py",
            p.fill(include_str!("../../../templates/python/filter.py")),
        ),
        File::text(
            "test_filter.py",
            p.fill(include_str!("../../../templates/python/test_filter.py")),
        ),
        File::text(
            "README.md",
            p.fill(include_str!("../../../templates/python/README.md")),
        ),
        File::text("requirements.txt", requirements()),
        File::text(".gitignore", "/.venv\n/*.wasm\n__pycache__/\n".to_owned()),
        File::text(
            "weir_filter/__init__.py",
            include_str!("../../../../filters/python/weir_filter/__init__.py").to_owned(),
        ),
        File::text(
            "weir_filter/testing.py",
            include_str!("../../../../filters/python/weir_filter/testing.py").to_owned(),
        ),
        File::text(
            "wit/filter.wit",
            include_str!("../../../../filter-sdk/wit/filter.wit").to_owned(),
        ),
        File {
            path: "build.sh",
            bytes: p
                .fill(include_str!("../../../templates/python/build.sh"))
                .into_bytes(),
            executable: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn requirements_keep_the_pin() {
        let r = super::requirements();
        assert!(r.contains("\ncomponentize-py=="), "{r}");
        assert!(!r.contains("target/venv"), "{r}");
    }
}

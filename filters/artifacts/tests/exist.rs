//! Every component the build script reports exists and is a component.

use std::path::Path;

use weir_filter_artifacts::{ALL, NOT_BUILT, read};

/// `\0asm`, then version 0x0d and layer 1: a component, not a core module (`01 00 00 00`).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";

#[test]
fn every_component_exists_and_is_a_component() {
    for (name, path) in ALL {
        assert!(
            Path::new(path).is_absolute(),
            "{name}: {path} is not absolute"
        );
        let bytes = read(path);
        assert!(
            bytes.starts_with(&COMPONENT_HEADER),
            "{name}: {path} does not start with the component header: {:02x?}",
            &bytes[..bytes.len().min(8)]
        );
    }
    for (name, why) in NOT_BUILT {
        eprintln!("{name} was not built: {why}");
    }
}

#[test]
fn the_fixtures_and_keep_all_are_built() {
    use weir_filter_artifacts::{HOSTILE, KEEP_ALL, OTHER_WORLD, SNEAKY};
    for path in [KEEP_ALL, HOSTILE, OTHER_WORLD, SNEAKY] {
        assert!(
            ALL.iter().any(|(_, p)| *p == path),
            "{path} missing from ALL"
        );
        assert!(Path::new(path).is_file(), "{path}");
    }
}

#[test]
#[should_panic(expected = "cannot read filter component")]
fn read_panics_on_a_missing_file() {
    read("/nonexistent/weir-filter.wasm");
}

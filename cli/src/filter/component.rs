//! `weir filter component CORE.wasm -o FILTER.wasm`: makes a filter component of a core
//! WebAssembly module built by a C (or other) toolchain that cannot make components, as
//! `wasm-tools component new` would: the component type comes from the module's
//! `component-type` custom section (which wit-bindgen's C bindings link in).
//!
//! Invariant: the module's imports are all functions of `weir:filter/host` (checked
//! first): a WASI import would need the preview1 adapter, and the broker gives filters no
//! WASI anyway, so refusing it here names the cause better than a failed upload would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

/// The only core import module a filter's module may have.
const HOST_IMPORT: &str = "weir:filter/host@0.1.0";

#[derive(Args, Debug)]
pub struct ComponentArgs {
    /// The core module (e.g. built with `clang --target=wasm32-wasi -mexec-model=reactor`
    /// and the bindings `weir filter new --lang c` writes).
    module: PathBuf,
    /// Where to write the component.
    #[arg(short, long)]
    output: PathBuf,
}

/// The imports of `core` outside [`HOST_IMPORT`], as `module::name`.
fn foreign_imports(core: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut bad = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        if let wasmparser::Payload::ImportSection(section) =
            payload.context("reading the module")?
        {
            for import in section.into_imports() {
                let import = import.context("reading the module's imports")?;
                if import.module != HOST_IMPORT {
                    bad.push(format!("{}::{}", import.module, import.name));
                }
            }
        }
    }
    Ok(bad)
}

/// The component made of `core`.
pub(crate) fn componentize(core: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !core.starts_with(b"\0asm") {
        bail!("not a WebAssembly module");
    }
    let bad = foreign_imports(core)?;
    if !bad.is_empty() {
        bail!(
            "the module imports {} besides {HOST_IMPORT}: a filter gets no WASI (no printf, \
             files or clocks); keep to malloc and string functions",
            bad.join(", ")
        );
    }
    wit_component::ComponentEncoder::default()
        .module(core)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("making the component (was the module linked with the bindings' message_filter_component_type.o?)")
}

pub fn run(args: ComponentArgs) -> anyhow::Result<()> {
    let core = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let component = componentize(&core).with_context(|| format!("{}", args.module.display()))?;
    std::fs::write(&args.output, &component)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({} bytes)",
        args.output.display(),
        component.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_filter_module() {
        let e = componentize(b"nope").unwrap_err().to_string();
        assert!(e.contains("not a WebAssembly module"), "{e}");
        // A module importing a WASI function: (module (import "wasi_snapshot_preview1"
        // "fd_write" (func (param i32 i32 i32 i32) (result i32)))).
        let wasi: &[u8] = &[
            0, 97, 115, 109, 1, 0, 0, 0, // magic, version
            1, 9, 1, 96, 4, 127, 127, 127, 127, 1, 127, // type section
            2, 35, 1, 22, b'w', b'a', b's', b'i', b'_', b's', b'n', b'a', b'p', b's', b'h', b'o',
            b't', b'_', b'p', b'r', b'e', b'v', b'i', b'e', b'w', b'1', 8, b'f', b'd', b'_', b'w',
            b'r', b'i', b't', b'e', 0, 0, // import section
        ];
        let e = format!("{:#}", componentize(wasi).unwrap_err());
        assert!(e.contains("wasi_snapshot_preview1::fd_write"), "{e}");
    }
}

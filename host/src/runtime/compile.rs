//! Validating and compiling an uploaded app into a serialized [`Artifact`].
//!
//! Compilation happens once, at upload, never on the call path: Cranelift takes tens of
//! milliseconds for a small Rust app and seconds for Python or JavaScript, while loading the
//! serialized result takes about 0.1 ms. Validation runs on the compiled component, against
//! the same linker calls use, so an app that passes here instantiates later:
//! 1. the bytes must be a component (a core module gets a message saying how to make one);
//! 2. every import must be `stasis:app/{ari,log,kv,types}` or WASI that the linker provides;
//! 3. the `stasis:app/callbacks` export must exist with the contract's function types;
//! 4. the optional `stasis:app/interest` export, when present, must have its contract type.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, Type};

use super::bindings;
use super::engine::{RuntimeError, RuntimeInner};

/// The interface the app must export.
pub const CALLBACKS_EXPORT: &str = "stasis:app/callbacks@0.1.0";
/// The optional interface through which an app declares the events it wants.
pub const INTEREST_EXPORT: &str = "stasis:app/interest@0.1.0";
/// Its one function: `on-event-types: func() -> list<string>`.
const INTEREST_FUNC: &str = "on-event-types";
/// The contract's interfaces an app may import (besides WASI).
const CONTRACT_IMPORTS: &[&str] = &[
    "stasis:app/ari@0.1.0",
    "stasis:app/log@0.1.0",
    "stasis:app/kv@0.1.0",
    "stasis:app/types@0.1.0",
];

/// A compiled app: machine code serialized by the engine, plus facts about the upload.
#[derive(Clone)]
pub struct Artifact {
    /// The serialized component, for [`Runtime::load`](super::Runtime::load). Persist it
    /// next to the upload; it is only valid for a runtime with the same configuration and
    /// wasmtime version.
    pub bytes: Vec<u8>,
    /// SHA-256 of the uploaded component (hex).
    pub source_sha256: String,
    /// Size of the uploaded component in bytes.
    pub source_len: usize,
    /// How long compilation took.
    pub compile_time: Duration,
    /// The component's imports, e.g. `stasis:app/ari@0.1.0`, `wasi:cli/stderr@0.2.6`.
    pub imports: Vec<String>,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("bytes", &self.bytes.len())
            .field("source_sha256", &self.source_sha256)
            .field("source_len", &self.source_len)
            .field("compile_time", &self.compile_time)
            .field("imports", &self.imports)
            .finish()
    }
}

impl AsRef<[u8]> for Artifact {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// What the header says the bytes are.
fn check_header(wasm: &[u8]) -> Result<(), RuntimeError> {
    if wasmtime::Engine::detect_precompiled(wasm).is_some() {
        return Err(RuntimeError::Precompiled);
    }
    match wasm {
        // Core module: magic + version 1.
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Err(RuntimeError::CoreModule),
        // Component: magic + version 0x0d, layer 1.
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(()),
        [0, b'a', b's', b'm', ..] => Err(RuntimeError::Compile(
            "unsupported WebAssembly binary version".into(),
        )),
        // The text format (WAT) is accepted for tools and tests; wasmtime parses it.
        _ if wasm.trim_ascii_start().starts_with(b"(") => Ok(()),
        _ => Err(RuntimeError::NotWasm),
    }
}

/// Checks the component against the `app` world and the linker.
fn check_world(rt: &RuntimeInner, component: &Component) -> Result<Vec<String>, RuntimeError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(&rt.engine).map(|(n, _)| n.to_owned()).collect();
    let unknown: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|n| !CONTRACT_IMPORTS.contains(n) && !n.starts_with("wasi:"))
        .collect();
    let has_callbacks = ty.exports(&rt.engine).any(|(n, _)| n == CALLBACKS_EXPORT);
    let mut problems = Vec::new();
    if !has_callbacks {
        problems.push(format!("missing export `{CALLBACKS_EXPORT}`"));
    }
    if !unknown.is_empty() {
        problems.push(format!("unknown imports: {}", unknown.join(", ")));
    }
    if let Err(problem) = interest_export(rt, component) {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(RuntimeError::WrongWorld(problems.join("; ")));
    }
    // The linker names a missing WASI function or a type mismatch precisely.
    let pre = rt
        .linker
        .instantiate_pre(component)
        .map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;
    bindings::AppPre::new(pre).map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;
    Ok(imports)
}

/// The app's `interest.on-event-types` function, if it exports the interface. Checked at
/// upload (and again at load) so that asking it later cannot fail on its type.
pub(crate) fn interest_export(
    rt: &RuntimeInner,
    component: &Component,
) -> Result<Option<ComponentExportIndex>, String> {
    let Some((ComponentItem::ComponentInstance(iface), index)) =
        component.get_export(None, INTEREST_EXPORT)
    else {
        return Ok(None);
    };
    let wrong =
        || format!("export `{INTEREST_EXPORT}` must be `{INTEREST_FUNC}: func() -> list<string>`");
    let Some(ComponentItem::ComponentFunc(func)) =
        iface.get_export(&rt.engine, INTEREST_FUNC).map(|e| e.ty)
    else {
        return Err(wrong());
    };
    let results: Vec<Type> = func.results().collect();
    let list_of_strings =
        matches!(results.as_slice(), [Type::List(l)] if matches!(l.ty(), Type::String));
    if func.params().len() != 0 || !list_of_strings {
        return Err(wrong());
    }
    Ok(component.get_export_index(Some(&index), INTEREST_FUNC))
}

pub(crate) fn compile(rt: &RuntimeInner, wasm: &[u8]) -> Result<Artifact, RuntimeError> {
    check_header(wasm)?;
    let started = Instant::now();
    let component =
        Component::new(&rt.engine, wasm).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
    let imports = check_world(rt, &component)?;
    let bytes = component
        .serialize()
        .map_err(|e| RuntimeError::Compile(format!("serialize: {e:#}")))?;
    let compile_time = started.elapsed();
    let source_sha256 = Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    tracing::info!(
        source_len = wasm.len(),
        artifact_len = bytes.len(),
        ?compile_time,
        "compiled app component"
    );
    Ok(Artifact {
        bytes,
        source_sha256,
        source_len: wasm.len(),
        compile_time,
        imports,
    })
}

/// Deserializes an artifact (no compilation) and checks it against the world again, so a
/// stale artifact fails at load rather than at the first call.
pub(crate) fn deserialize(rt: &RuntimeInner, bytes: &[u8]) -> Result<Component, RuntimeError> {
    // SAFETY: `Component::deserialize` trusts the machine code in `bytes`. Artifacts are
    // produced by `compile` above and kept in storage only the host writes (documented on
    // `Runtime::load`); wasmtime itself checks the format version and engine settings.
    let component = unsafe { Component::deserialize(&rt.engine, bytes) }
        .map_err(|e| RuntimeError::Artifact(format!("{e:#}")))?;
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_classification() {
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0rest"),
            Err(RuntimeError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        assert!(matches!(
            check_header(b"PK\x03\x04"),
            Err(RuntimeError::NotWasm)
        ));
        assert!(check_header(b"  (component)").is_ok());
    }
}

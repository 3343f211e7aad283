//! The app store: uploaded components, their compiled artifacts and their versions, on disk.
//!
//! Layout under the data dir:
//!
//! ```text
//! apps/<name>/manifest.json    versions (sha256, size, limits, config…) and the active one
//! apps/<name>/<sha256>.wasm    an uploaded component, named by its SHA-256
//! apps/<name>/<sha256>.cwasm   its compiled artifact (checksum in the manifest)
//! ```
//!
//! Why it is shaped like this:
//! - Every file is written to a temporary file in the same directory, fsynced, renamed over
//!   the final name, and the directory fsynced: a crash leaves either the old file or the
//!   new one, never half of one. The manifest is written last, so it only ever names files
//!   that are complete.
//! - Components are named by their hash and artifacts carry a checksum, so a file damaged
//!   behind the host's back is detected when read ([`StoreError::Corrupt`]) and the caller
//!   skips that version with an error instead of loading it (or crashing start-up).
//! - The artifact is a cache: one compiled by another wasmtime version or configuration is
//!   rebuilt from the component by the caller; only the component is precious.
//!
//! The store does blocking file I/O; async callers run it on the blocking pool.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::OnFault;

/// Versions kept per app (older ones are pruned from disk, the active one never).
pub const KEEP_VERSIONS: usize = 5;

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runtime limits of one app version (what `[apps.*]` configures for config-file apps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLimits {
    pub max_live_calls: usize,
    pub memory_mb: usize,
    pub callback_deadline_ms: u64,
    pub on_fault: OnFault,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            max_live_calls: 1000,
            memory_mb: 16,
            callback_deadline_ms: 1000,
            on_fault: OnFault::Hangup,
        }
    }
}

/// One uploaded version of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, 3… per app name, never reused.
    pub version: u32,
    /// SHA-256 of the component (hex); also its file name.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// SHA-256 of the compiled artifact (hex), to detect a damaged artifact.
    pub artifact_sha256: String,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded_at: u64,
    /// How long compiling the upload took.
    pub compile_ms: u64,
    pub limits: AppLimits,
    /// Values given to the app (seeded into its kv store as `config.<key>`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Everything the store knows about one app name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// The version taking new calls.
    pub active: Option<u32>,
    /// Oldest first.
    pub versions: Vec<VersionRecord>,
}

impl Manifest {
    pub fn new(name: &str) -> Manifest {
        Manifest {
            name: name.to_string(),
            active: None,
            versions: Vec::new(),
        }
    }

    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The number the next upload gets.
    pub fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    }

    /// Drops the oldest versions beyond [`KEEP_VERSIONS`], never the active one; returns the
    /// dropped records.
    pub fn prune(&mut self) -> Vec<VersionRecord> {
        let mut dropped = Vec::new();
        while self.versions.len() > KEEP_VERSIONS {
            let Some(i) = self
                .versions
                .iter()
                .position(|v| Some(v.version) != self.active)
            else {
                break;
            };
            dropped.push(self.versions.remove(i));
        }
        dropped
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Each stored app's name and its manifest, or why the manifest could not be read.
pub type StoredApps = Vec<(String, Result<Manifest, StoreError>)>;

/// The on-disk store rooted at a data dir.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let apps = data_dir.join("apps");
        std::fs::create_dir_all(&apps).map_err(io(&apps))?;
        Ok(Store {
            root: data_dir.to_path_buf(),
        })
    }

    fn app_dir(&self, name: &str) -> PathBuf {
        self.root.join("apps").join(name)
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.app_dir(name).join("manifest.json")
    }

    /// Path of the component of `sha256`.
    pub fn wasm_path(&self, name: &str, sha256: &str) -> PathBuf {
        self.app_dir(name).join(format!("{sha256}.wasm"))
    }

    /// Path of the compiled artifact of component `sha256`.
    pub fn artifact_path(&self, name: &str, sha256: &str) -> PathBuf {
        self.app_dir(name).join(format!("{sha256}.cwasm"))
    }

    /// The manifests of every stored app, each read independently: one unreadable app is
    /// an error for that name only. Leftover temporary files of an interrupted write are
    /// removed.
    pub fn load_all(&self) -> Result<StoredApps, StoreError> {
        let apps = self.root.join("apps");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&apps).map_err(io(&apps))? {
            let entry = entry.map_err(io(&apps))?;
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".deleted-") {
                // A delete interrupted after its rename: finish it.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            remove_temporaries(&entry.path());
            out.push((name.clone(), self.read_manifest(&name)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn read_manifest(&self, name: &str) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(name);
        let text = std::fs::read(&path).map_err(io(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if manifest.name != name {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                reason: format!("names app {:?}", manifest.name),
            });
        }
        Ok(manifest)
    }

    /// The component of `version`, checked against its hash.
    pub fn read_wasm(&self, name: &str, version: &VersionRecord) -> Result<Vec<u8>, StoreError> {
        let path = self.wasm_path(name, &version.sha256);
        read_checked(&path, &version.sha256)
    }

    /// The compiled artifact of `version`, checked against its checksum.
    pub fn read_artifact(
        &self,
        name: &str,
        version: &VersionRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.artifact_path(name, &version.sha256);
        read_checked(&path, &version.artifact_sha256)
    }

    /// Writes a version's component and artifact (before its manifest names them).
    pub fn put_version(
        &self,
        name: &str,
        sha256: &str,
        wasm: &[u8],
        artifact: &[u8],
    ) -> Result<(), StoreError> {
        let dir = self.app_dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(&self.wasm_path(name, sha256), wasm)?;
        self.put_artifact(name, sha256, artifact)
    }

    /// Replaces the artifact of component `sha256` (after a recompile).
    pub fn put_artifact(
        &self,
        name: &str,
        sha256: &str,
        artifact: &[u8],
    ) -> Result<(), StoreError> {
        write_atomic(&self.artifact_path(name, sha256), artifact)
    }

    /// Writes the manifest, then removes files no version names any more.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let dir = self.app_dir(&manifest.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        write_atomic(&self.manifest_path(&manifest.name), &json)?;
        self.collect_garbage(manifest);
        Ok(())
    }

    fn collect_garbage(&self, manifest: &Manifest) {
        let dir = self.app_dir(&manifest.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((stem, ext)) = file.rsplit_once('.') else {
                continue;
            };
            if matches!(ext, "wasm" | "cwasm")
                && !manifest.versions.iter().any(|v| v.sha256 == stem)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes an app and all its versions. The directory is renamed away first, so a crash
    /// midway never leaves a half-deleted app that would load at start-up.
    pub fn remove_app(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.app_dir(name);
        if !dir.exists() {
            return Ok(());
        }
        let trash = self
            .root
            .join("apps")
            .join(format!(".deleted-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io(&dir))?;
        sync_dir(&self.root.join("apps"));
        std::fs::remove_dir_all(&trash).map_err(io(&trash))
    }
}

fn read_checked(path: &Path, sha256: &str) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "checksum {actual} does not match the recorded {sha256} ({} bytes)",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Temp file in the same directory + write + fsync + rename + fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store paths have a parent");
    let file_name = path
        .file_name()
        .expect("store paths have a file name")
        .to_string_lossy();
    let tmp = dir.join(format!(".tmp-{}-{file_name}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io {
            path: path.display().to_string(),
            source,
        });
    }
    sync_dir(dir);
    Ok(())
}

/// Makes a rename durable. Best effort: not every platform can open a directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u32, wasm: &[u8], artifact: &[u8]) -> VersionRecord {
        VersionRecord {
            version,
            sha256: sha256_hex(wasm),
            size: wasm.len() as u64,
            artifact_sha256: sha256_hex(artifact),
            uploaded_at: 0,
            compile_ms: 1,
            limits: AppLimits::default(),
            config: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v1 = record(1, b"wasm-one", b"art-one");
        store
            .put_version("conf", &v1.sha256, b"wasm-one", b"art-one")
            .unwrap();
        let mut m = Manifest::new("conf");
        m.versions.push(v1.clone());
        m.active = Some(1);
        store.write_manifest(&m).unwrap();

        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_ref().unwrap(), &m);
        assert_eq!(store.read_wasm("conf", &v1).unwrap(), b"wasm-one");
        assert_eq!(store.read_artifact("conf", &v1).unwrap(), b"art-one");

        // A damaged artifact and a truncated component are detected, not loaded.
        std::fs::write(store.artifact_path("conf", &v1.sha256), b"art-onX").unwrap();
        assert!(matches!(
            store.read_artifact("conf", &v1),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(store.wasm_path("conf", &v1.sha256), b"wasm").unwrap();
        assert!(matches!(
            store.read_wasm("conf", &v1),
            Err(StoreError::Corrupt { .. })
        ));

        // A half-written manifest is an error for that app only.
        std::fs::create_dir_all(dir.path().join("apps/other")).unwrap();
        std::fs::write(
            dir.path().join("apps/other/manifest.json"),
            b"{\"name\": \"oth",
        )
        .unwrap();
        std::fs::write(dir.path().join("apps/other/.tmp-1-x.wasm"), b"partial").unwrap();
        let all = store.load_all().unwrap();
        assert!(all[0].1.is_ok());
        assert!(
            matches!(all[1].1, Err(StoreError::Corrupt { .. })),
            "{:?}",
            all[1]
        );
        assert!(
            !dir.path().join("apps/other/.tmp-1-x.wasm").exists(),
            "temporaries are cleaned"
        );

        store.remove_app("conf").unwrap();
        assert_eq!(store.load_all().unwrap().len(), 1);
    }

    #[test]
    fn prune_keeps_the_active_version_and_drops_unreferenced_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut m = Manifest::new("a");
        for v in 1..=(KEEP_VERSIONS as u32 + 2) {
            let wasm = format!("w{v}");
            let rec = record(v, wasm.as_bytes(), b"art");
            store
                .put_version("a", &rec.sha256, wasm.as_bytes(), b"art")
                .unwrap();
            m.versions.push(rec);
        }
        m.active = Some(1);
        let dropped = m.prune();
        assert_eq!(
            dropped.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(m.versions.len(), KEEP_VERSIONS);
        assert!(m.version(1).is_some());
        store.write_manifest(&m).unwrap();
        let files = std::fs::read_dir(dir.path().join("apps/a"))
            .unwrap()
            .count();
        assert_eq!(files, 1 + 2 * KEEP_VERSIONS);
        assert_eq!(m.next_version(), KEEP_VERSIONS as u32 + 3);
    }
}

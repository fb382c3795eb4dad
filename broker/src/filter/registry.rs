//! (Over 600 lines: one type whose every change runs under its one `changes` lock, with the
//! files it writes and removes; split, the crash-safety argument below would be spread
//! over several files.)
//!
//! Which filter applies to which (group, topic): durable, versioned, with compiled code
//! cached on disk.
//!
//! Layout under `<data_dir>/filters/`:
//! - `registry.json`: every registration (group, topic, sha256, version, params, ...),
//!   replaced atomically on each change;
//! - `components/<sha256>.wasm`: the uploaded bytes, content-addressed;
//! - `compiled/<sha256>-<engine hash>.cwasm`: wasmtime's compiled code for them, keyed by
//!   the engine's compatibility hash so another wasmtime recompiles instead of misloading.
//!
//! Files are written before the registry names them, and unnamed ones are removed at
//! open, so a crash at any point leaves either the old registration or the new one.
//!
//! Slightly over ~600 lines on purpose: registering, persisting and reopening share one
//! lock and one file format, and the crash-safety rule above spans all three.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use weir_protocol::filter::{FilterInfo, FilterList, FilterUploaded};

use super::FilterError;
use super::runtime::{CompiledFilter, FilterLabel, FilterRuntime, LoadedFilter, sha256_hex};

/// Where the SHA-256 of a cached compiled file is kept.
fn digest_path(compiled: &Path) -> PathBuf {
    let mut name = compiled.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// One registration as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistryEntry {
    pub group: String,
    pub topic: String,
    pub sha256: String,
    pub version: u64,
    pub params: Vec<(String, String)>,
    pub size: u64,
    pub needs_body: bool,
    pub uploaded_at: i64,
    /// The memory cap the upload asked, bytes; `None` (and absent in files written before
    /// uploads could ask one) takes the broker's `filter.memory_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Why this version was marked failed (it failed too many batches in a row); kept
    /// across restarts until a new version is uploaded or the mark is reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    filters: Vec<RegistryEntry>,
}

/// A registration and its loaded filter, or why it could not be loaded (then the group's
/// pulls on the topic fail: a registered filter is never skipped).
#[derive(Clone)]
pub struct Registration {
    pub entry: RegistryEntry,
    pub filter: Result<Arc<LoadedFilter>, String>,
}

type Key = (String, String);

pub struct FilterRegistry {
    runtime: FilterRuntime,
    dir: PathBuf,
    /// (group, topic) → registration. Read on every pull of every group.
    registrations: RwLock<BTreeMap<Key, Registration>>,
    /// One change at a time: versions are assigned and the file replaced under it.
    changes: Mutex<()>,
    compilations: AtomicU64,
    cache_loads: AtomicU64,
}

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> FilterError {
    FilterError::Storage(format!("{what} {}: {e}", path.display()))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FilterRegistry {
    /// Loads every registration, from cached compiled code where it is there. Blocking.
    pub fn open(runtime: FilterRuntime, data_dir: &Path) -> Result<Self, FilterError> {
        let dir = data_dir.join("filters");
        let registry = Self {
            runtime,
            dir,
            registrations: RwLock::new(BTreeMap::new()),
            changes: Mutex::new(()),
            compilations: AtomicU64::new(0),
            cache_loads: AtomicU64::new(0),
        };
        let entries = registry.read_file()?;
        let mut loaded = BTreeMap::new();
        for entry in entries {
            let label = FilterLabel::new(
                &entry.group,
                &entry.topic,
                entry.version,
                entry.sha256.clone(),
            );
            // A cap above a maximum the operator lowered since is not silently cut: the
            // filter fails to load, saying why, until it is uploaded again.
            let filter = registry
                .runtime
                .check_memory(entry.memory)
                .and_then(|memory| Ok((registry.compiled(&entry.sha256, None)?.0, memory)))
                .map(|(compiled, memory)| {
                    let filter = registry.runtime.restore(
                        compiled,
                        entry.params.clone(),
                        entry.needs_body,
                        memory,
                        label.clone(),
                    );
                    if let Some(cause) = &entry.failed {
                        warn!(filter = %label, cause = %cause, "filter still marked failed; upload a new version or reset it");
                        filter.mark_failed(cause.clone());
                    }
                    filter
                })
                .map_err(|e| {
                    warn!(filter = %label, error = %e, "cannot load a registered filter; the group's pulls on the topic fail until it is uploaded again");
                    format!("the registered filter cannot be loaded: {e}")
                });
            loaded.insert(
                (entry.group.clone(), entry.topic.clone()),
                Registration { entry, filter },
            );
        }
        if !loaded.is_empty() {
            info!(
                filters = loaded.len(),
                compiled = registry.compilations.load(Ordering::Relaxed),
                from_cache = registry.cache_loads.load(Ordering::Relaxed),
                "filters loaded"
            );
        }
        *registry
            .registrations
            .write()
            .map_err(|_| FilterError::Runtime("registry lock poisoned".into()))? = loaded;
        registry.remove_unreferenced_files();
        Ok(registry)
    }

    pub fn runtime(&self) -> &FilterRuntime {
        &self.runtime
    }

    fn file_path(&self) -> PathBuf {
        self.dir.join("registry.json")
    }
    fn component_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("components").join(format!("{sha256}.wasm"))
    }
    fn compiled_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("compiled").join(format!(
            "{sha256}-{}.cwasm",
            self.runtime.compatibility_hash()
        ))
    }

    fn read_file(&self) -> Result<Vec<RegistryEntry>, FilterError> {
        let path = self.file_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(storage("cannot read", &path, e)),
        };
        let file: RegistryFile =
            serde_json::from_slice(&bytes).map_err(|e| storage("cannot parse", &path, e))?;
        if file.version != 1 {
            return Err(storage("unknown format version in", &path, file.version));
        }
        // The sha256 names files: nothing but a digest may reach a path.
        if let Some(bad) = file.filters.iter().find(|e| !is_sha256_hex(&e.sha256)) {
            return Err(storage("bad sha256 in", &path, &bad.sha256));
        }
        Ok(file.filters)
    }

    fn write_file(&self, regs: &BTreeMap<Key, Registration>) -> Result<(), FilterError> {
        let file = RegistryFile {
            version: 1,
            filters: regs.values().map(|r| r.entry.clone()).collect(),
        };
        let path = self.file_path();
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| storage("cannot encode", &path, e))?;
        weir_store::write_atomic(&path, &bytes).map_err(|e| storage("cannot write", &path, e))
    }

    /// Compiled code for a stored component: from the cache, or compiled from the
    /// component file (`bytes` when the caller has them) and cached. Returns whether it
    /// compiled.
    fn compiled(
        &self,
        sha256: &str,
        bytes: Option<&[u8]>,
    ) -> Result<(CompiledFilter, bool), FilterError> {
        let cached = self.compiled_path(sha256);
        let digest_path = digest_path(&cached);
        if let (Ok(code), Ok(digest)) = (
            std::fs::read(&cached),
            std::fs::read_to_string(&digest_path),
        ) {
            if sha256_hex(&code) == digest.trim() {
                // SAFETY: the bytes are exactly what `FilterRuntime::serialize` produced in
                // this data folder (their digest, written beside them, matches), under a name
                // carrying this engine's compatibility hash.
                match unsafe { self.runtime.deserialize(&code) } {
                    Ok(c) => {
                        self.cache_loads.fetch_add(1, Ordering::Relaxed);
                        return Ok((c, false));
                    }
                    Err(e) => warn!(error = %e, "cached compiled filter unusable; compiling again"),
                }
            } else {
                warn!(file = %cached.display(), "cached compiled filter does not match its digest; compiling again");
            }
        }
        let read;
        let bytes = match bytes {
            Some(b) => b,
            None => {
                let path = self.component_path(sha256);
                read = std::fs::read(&path).map_err(|e| storage("cannot read", &path, e))?;
                if sha256_hex(&read) != sha256 {
                    return Err(storage("content does not match its sha256:", &path, sha256));
                }
                &read
            }
        };
        let (started, before) = (
            std::time::Instant::now(),
            self.runtime.compile_cache_stats(),
        );
        let compiled = self.runtime.compile(bytes)?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let after = self.runtime.compile_cache_stats();
        info!(
            sha256,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            functions_from_cache = after.hits.saturating_sub(before.hits),
            functions_compiled = after.misses.saturating_sub(before.misses),
            cache_bytes = after.bytes,
            "filter compiled"
        );
        match self.runtime.serialize(&compiled) {
            Ok(code) => {
                // The code first, then its digest: a digest always describes whole code.
                let written = weir_store::write_atomic(&cached, &code).and_then(|()| {
                    weir_store::write_atomic(&digest_path, sha256_hex(&code).as_bytes())
                });
                if let Err(e) = written {
                    warn!(error = %e, "cannot cache compiled filter; it will be compiled again at the next start");
                }
            }
            Err(e) => warn!(error = %e, "cannot serialize compiled filter"),
        }
        Ok((compiled, true))
    }

    /// The filter of (group, topic), if one is registered.
    pub fn lookup(&self, group: &str, topic: &str) -> Option<Result<Arc<LoadedFilter>, String>> {
        let regs = self.registrations.read().ok()?;
        regs.get(&(group.to_owned(), topic.to_owned()))
            .map(|r| r.filter.clone())
    }

    /// Whether any filter is registered (the pull path skips lookups when none is).
    pub fn is_empty(&self) -> bool {
        self.registrations.read().map_or(true, |r| r.is_empty())
    }

    /// Validates, compiles (or reuses cached code), runs `init`, persists, and makes the
    /// new version current: pulls already running finish their batch with the old one.
    /// `bytes` may be gzip-compressed; `memory` is the cap asked (`None`: the default).
    /// Blocking. On any error nothing is registered.
    pub fn upload(
        &self,
        group: &str,
        topic: &str,
        bytes: &[u8],
        params: Vec<(String, String)>,
        memory: Option<u64>,
    ) -> Result<FilterUploaded, FilterError> {
        self.register(group, topic, bytes, params, memory, None)
    }

    /// A slave's copy of its master's registration: the same component, parameters and
    /// version. Blocking.
    pub fn install(
        &self,
        group: &str,
        topic: &str,
        bytes: &[u8],
        params: Vec<(String, String)>,
        memory: Option<u64>,
        version: u64,
    ) -> Result<FilterUploaded, FilterError> {
        self.register(group, topic, bytes, params, memory, Some(version))
    }

    /// Every registration, as persisted.
    pub fn entries(&self) -> Vec<RegistryEntry> {
        self.registrations
            .read()
            .map(|r| r.values().map(|r| r.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// The stored component of this hash, if there is one.
    pub fn component_bytes(&self, sha256: &str) -> Option<Vec<u8>> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        std::fs::read(self.component_path(sha256)).ok()
    }

    fn register(
        &self,
        group: &str,
        topic: &str,
        bytes: &[u8],
        params: Vec<(String, String)>,
        memory: Option<u64>,
        version: Option<u64>,
    ) -> Result<FilterUploaded, FilterError> {
        // Before the lock and any work: the cap asked, the parameters' size.
        let memory_cap = self.runtime.check_memory(memory)?;
        let config = self.runtime.config();
        let params_size = params
            .iter()
            .map(|(k, v)| k.len().saturating_add(v.len()))
            .fold(0usize, usize::saturating_add);
        if params_size > config.max_params_bytes {
            return Err(FilterError::ParamsTooLarge {
                size: params_size,
                limit: config.max_params_bytes,
            });
        }
        let lock_err = || FilterError::Runtime("registry lock poisoned".into());
        let _change = self.changes.lock().map_err(|_| lock_err())?;
        // Inflated under the lock, one upload at a time (they compile one at a time
        // anyway): 64 uploads of a 40 KB gzip inflating to the size limit each, inflated
        // at once, took the broker to 3.4 GB.
        let inflated = super::runtime::inflate(bytes, config.max_component_bytes)?;
        let bytes: &[u8] = &inflated;
        let key = (group.to_owned(), topic.to_owned());
        let (held, next_version) = {
            let registrations = self.registrations.read().map_err(|_| lock_err())?;
            let next = registrations.get(&key).map(|r| r.entry.version + 1);
            (registrations.len(), next)
        };
        // A new registration within the bound (a slave's copy follows its master's).
        if next_version.is_none() && version.is_none() && held >= config.max_filters {
            return Err(FilterError::TooMany {
                max: config.max_filters,
            });
        }
        let next_version = next_version.unwrap_or(1);
        let version = version.unwrap_or(next_version);
        let sha256 = sha256_hex(bytes);
        let label = FilterLabel::new(group, topic, version, sha256.clone());
        // Size and kind before anything is compiled, loaded or written.
        self.runtime.check_bytes(bytes)?;
        let loaded = self.compiled(&sha256, Some(bytes)).and_then(|(c, did)| {
            let loaded = self
                .runtime
                .load(c, params.clone(), memory_cap, label.clone())?;
            Ok((loaded, did))
        });
        let (filter, did_compile) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // The compiled code may have been cached already: nothing stays behind.
                // Still under `changes`: another upload's files, written but not yet
                // registered, must not look unreferenced.
                self.remove_unreferenced_files();
                return Err(e);
            }
        };
        let component = self.component_path(&sha256);
        if !component.exists() {
            weir_store::write_atomic(&component, bytes)
                .map_err(|e| storage("cannot write", &component, e))?;
        }
        let entry = RegistryEntry {
            group: group.to_owned(),
            topic: topic.to_owned(),
            sha256: sha256.clone(),
            version,
            params,
            size: bytes.len() as u64,
            needs_body: filter.needs_body(),
            uploaded_at: now_ms(),
            memory,
            failed: None,
        };
        let mut next = self.registrations.read().map_err(|_| lock_err())?.clone();
        next.insert(
            key,
            Registration {
                entry,
                filter: Ok(Arc::clone(&filter)),
            },
        );
        self.write_file(&next)?;
        *self.registrations.write().map_err(|_| lock_err())? = next;
        info!(filter = %label, compiled = did_compile, needs_body = filter.needs_body(), "filter registered");
        self.remove_unreferenced_files();
        Ok(FilterUploaded {
            sha256,
            version,
            compiled: did_compile,
            needs_body: filter.needs_body(),
        })
    }

    /// Records on disk that `filter` is marked failed, if it is and it is still the
    /// current version of its (group, topic), so the mark outlives a restart. Blocking.
    pub fn persist_mark(&self, filter: &LoadedFilter) -> Result<(), FilterError> {
        let Some(cause) = filter.marked_failed() else {
            return Ok(());
        };
        let label = filter.label();
        self.change_entry(&label.group, &label.topic, |r| {
            let current = matches!(&r.filter, Ok(f) if std::ptr::eq(Arc::as_ptr(f), filter));
            if !current || r.entry.failed.as_deref() == Some(cause.as_str()) {
                return false;
            }
            r.entry.failed = Some(cause.clone());
            true
        })
        .map(|_| ())
    }

    /// Clears the failed mark of (group, topic)'s filter, in memory and on disk; returns
    /// its version and the cause it was marked for (`None` if it was not), or `None` when
    /// no filter is registered. Blocking.
    pub fn reset(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Option<(u64, Option<String>)>, FilterError> {
        let mut persisted = None;
        let found = self.change_entry(group, topic, |r| {
            // Nothing to clear when the registered code itself cannot be loaded.
            if r.filter.is_err() {
                return false;
            }
            persisted = r.entry.failed.take();
            persisted.is_some()
        })?;
        let Some(r) = found else {
            return Ok(None);
        };
        let filter = match &r.filter {
            Ok(f) => f,
            Err(cause) => {
                return Err(FilterError::Invalid(format!(
                    "the filter of group {group:?} on topic {topic:?} cannot be reset: {cause}; upload it again"
                )));
            }
        };
        // In memory only once the disk says so too.
        let cleared = filter.clear_mark().or(persisted);
        if let Some(cause) = &cleared {
            info!(group = %r.entry.group, topic = %r.entry.topic, version = r.entry.version, cause = %cause, "filter's failed mark reset");
        }
        Ok(Some((r.entry.version, cleared)))
    }

    /// Applies `change` to (group, topic)'s registration under the change lock, writing
    /// the registry when it returns true; returns the registration as it is after.
    fn change_entry(
        &self,
        group: &str,
        topic: &str,
        change: impl FnOnce(&mut Registration) -> bool,
    ) -> Result<Option<Registration>, FilterError> {
        let lock_err = || FilterError::Runtime("registry lock poisoned".into());
        let _change = self.changes.lock().map_err(|_| lock_err())?;
        let key = (group.to_owned(), topic.to_owned());
        let mut next = self.registrations.read().map_err(|_| lock_err())?.clone();
        let Some(r) = next.get_mut(&key) else {
            return Ok(None);
        };
        let write = change(r);
        let after = r.clone();
        if write {
            self.write_file(&next)?;
            *self.registrations.write().map_err(|_| lock_err())? = next;
        }
        Ok(Some(after))
    }

    /// Unregisters (group, topic)'s filter; returns its version.
    pub fn remove(&self, group: &str, topic: &str) -> Result<Option<u64>, FilterError> {
        let removed = self.remove_where(|e| e.group == group && e.topic == topic)?;
        Ok(removed.first().map(|e| e.version))
    }

    /// Unregisters every filter of `group` (a deleted group); returns what was removed.
    pub fn remove_group(&self, group: &str) -> Result<Vec<RegistryEntry>, FilterError> {
        self.remove_where(|e| e.group == group)
    }

    /// Unregisters the filters `which` picks, in one write of the registry; their
    /// components and compiled code go too unless another registration uses them.
    fn remove_where(
        &self,
        which: impl Fn(&RegistryEntry) -> bool,
    ) -> Result<Vec<RegistryEntry>, FilterError> {
        let lock_err = || FilterError::Runtime("registry lock poisoned".into());
        let _change = self.changes.lock().map_err(|_| lock_err())?;
        let mut next = self.registrations.read().map_err(|_| lock_err())?.clone();
        let mut removed = Vec::new();
        next.retain(|_, r| {
            let go = which(&r.entry);
            if go {
                removed.push(r.entry.clone());
            }
            !go
        });
        if removed.is_empty() {
            return Ok(removed);
        }
        self.write_file(&next)?;
        *self.registrations.write().map_err(|_| lock_err())? = next;
        for e in &removed {
            info!(group = %e.group, topic = %e.topic, version = e.version, "filter removed");
        }
        self.remove_unreferenced_files();
        Ok(removed)
    }

    pub fn list(&self, group: Option<&str>) -> FilterList {
        let filters = self
            .registrations
            .read()
            .map(|regs| {
                regs.values()
                    .filter(|r| group.is_none_or(|g| r.entry.group == g))
                    .map(|r| {
                        let e = &r.entry;
                        let (failed, stats, memory) = match &r.filter {
                            Ok(f) => (f.marked_failed(), f.stats(), f.memory_limit() as u64),
                            Err(cause) => (
                                Some(cause.clone()),
                                Default::default(),
                                e.memory
                                    .unwrap_or(self.runtime.config().memory_limit as u64),
                            ),
                        };
                        FilterInfo {
                            group: e.group.clone(),
                            topic: e.topic.clone(),
                            sha256: e.sha256.clone(),
                            version: e.version,
                            params: e.params.clone(),
                            size: e.size,
                            needs_body: e.needs_body,
                            memory,
                            uploaded_at: e.uploaded_at,
                            failed,
                            stats,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        FilterList {
            filters,
            compilations: self.compilations.load(Ordering::Relaxed),
            cache_loads: self.cache_loads.load(Ordering::Relaxed),
        }
    }

    /// Deletes component and compiled files no registration names (left by a replace, a
    /// remove, or a crash between writing them and the registry).
    fn remove_unreferenced_files(&self) {
        let Ok(regs) = self.registrations.read() else {
            return;
        };
        let live: HashSet<&str> = regs.values().map(|r| r.entry.sha256.as_str()).collect();
        for sub in ["components", "compiled"] {
            let Ok(dir) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for f in dir.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                let sha = name.split(['.', '-']).next().unwrap_or_default();
                // Compiled code of another engine (an older wasmtime) is never loaded again.
                let other_engine =
                    sub == "compiled" && !name.contains(self.runtime.compatibility_hash());
                if (!live.contains(sha) || other_engine)
                    && let Err(e) = std::fs::remove_file(f.path())
                {
                    warn!(file = %f.path().display(), error = %e, "cannot remove an unused filter file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A `registry.json` written before uploads could ask a memory cap still loads: its
    /// filters take the broker's default.
    #[test]
    fn registry_file_without_memory_caps_loads() {
        let old = r#"{"version":1,"filters":[{"group":"g","topic":"t","sha256":"00","version":2,
            "params":[["expr","a = 1"]],"size":10,"needs_body":false,"uploaded_at":5}]}"#;
        let file: super::RegistryFile = serde_json::from_str(old).expect("old file parses");
        assert_eq!(file.filters[0].memory, None);
        let written = serde_json::to_string(&file.filters[0]).expect("encodes");
        assert!(!written.contains("memory"), "{written}");
    }
}

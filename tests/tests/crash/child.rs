//! The broker under test's configuration: a standalone broker (an embedded name server
//! beside it, as `weir-broker` without `--namesrv` runs) with sync flush and small files,
//! run as a child process by `weir_tests::child`.

use std::path::{Path, PathBuf};

/// What the broker is run with: what a `weir-broker --config` file would hold.
pub struct ChildSettings {
    pub commit_log_segment_size: u64,
    pub consume_queue_segment_entries: u64,
    /// Whether the next commit log segment is created ahead, in the background, or by the
    /// append that needs it (a different moment for a kill to land in).
    pub prepare_ahead: bool,
}

/// Writes `<dir>/broker.toml` (data in `<dir>/data`) and returns its path.
pub fn write_config(dir: &Path, s: &ChildSettings) -> PathBuf {
    let data = dir.join("data");
    let data = data.to_str().expect("a UTF-8 temp path");
    let toml = format!(
        r#"# weir crash test: a standalone broker, sync flush, small files (many roll-overs).
listen = "127.0.0.1:0"

[store]
data_dir = "{data}"
flush_mode = "sync"
commit_log_segment_size = {seg}
consume_queue_segment_entries = {cq}
index_slots = 256
index_entries = 1024
# Consumer offsets and the checkpoint are written this often: several times a round.
checkpoint_interval_ms = 200
prepare_ahead = {ahead}
# Never delete for disk pressure: every message must stay readable from offset 0.
disk_max_used_ratio = 1.0
disk_full_ratio = 1.0

[filter]
workers = 1
"#,
        data = data.replace('\\', "\\\\").replace('"', "\\\""),
        seg = s.commit_log_segment_size,
        cq = s.consume_queue_segment_entries,
        ahead = s.prepare_ahead,
    );
    let path = dir.join("broker.toml");
    std::fs::write(&path, toml).expect("write the broker's config");
    path
}

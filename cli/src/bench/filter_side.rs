//! Which filter a consume benchmark applies (in this process, or the group's on the
//! brokers), and the pulls the group's filter failed, for its summary.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_client::{Admin, ClientInstance, FilterFailed, FilterInfo};

/// Pulls the group's filter failed (the readers keep trying, after a pause, until the end).
#[derive(Default)]
pub(super) struct FilterFailures {
    count: AtomicU64,
    last: Mutex<Option<String>>,
}

impl FilterFailures {
    pub(super) fn record(&self, f: &FilterFailed) {
        self.count.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.to_string());
    }

    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The last failure, if there was one.
    pub(super) fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({ "count": self.count(), "last": self.last() })
    }

    /// The summary's line, if a pull failed.
    pub(super) fn text(&self) -> Option<String> {
        let last = self.last()?;
        Some(format!(
            "filter failures: {} pulls (the last: {last})",
            super::grouped(self.count())
        ))
    }

    /// The run's outcome after its summary: an error if a pull failed.
    pub(super) fn outcome(&self) -> anyhow::Result<()> {
        match self.last() {
            Some(last) => anyhow::bail!(
                "the group's filter failed {} pulls; the last: {last}",
                self.count()
            ),
            None => Ok(()),
        }
    }
}

/// The filter a run applies, for the summary.
pub(super) enum FilterSide {
    /// `--local-filter`.
    Client {
        file: PathBuf,
        params: Vec<(String, String)>,
        needs_body: bool,
    },
    /// The group's filter for the topic, as the brokers run it: (broker, filter).
    Server {
        group: String,
        filters: Vec<(String, FilterInfo)>,
    },
}

impl FilterSide {
    pub(super) fn text(&self) -> String {
        match self {
            FilterSide::Client {
                file, needs_body, ..
            } => format!(
                "client-side, {} (needs body: {})",
                file.display(),
                if *needs_body { "yes" } else { "no" }
            ),
            FilterSide::Server { group, filters } => {
                let each: Vec<String> = filters
                    .iter()
                    .map(|(b, f)| {
                        let sha: String = f.sha256.chars().take(12).collect();
                        format!("{b} version {} (sha256 {sha})", f.version)
                    })
                    .collect();
                format!("server-side, group {group}: {}", each.join(", "))
            }
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        match self {
            FilterSide::Client {
                file,
                params,
                needs_body,
            } => serde_json::json!({
                "side": "client",
                "file": file.display().to_string(),
                "params": params.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "needs_body": needs_body,
            }),
            FilterSide::Server { group, filters } => serde_json::json!({
                "side": "server",
                "group": group,
                "brokers": filters.iter().map(|(b, f)| serde_json::json!({
                    "broker": b,
                    "version": f.version,
                    "sha256": f.sha256,
                    "needs_body": f.needs_body,
                    "failed": f.failed,
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

/// The group's filter for `topic` on the brokers, if it has one. Best effort: a broker
/// that cannot say is taken to have none.
pub(super) async fn server_filter(
    client: &ClientInstance,
    group: &str,
    topic: &str,
) -> Option<FilterSide> {
    let lists = Admin::new(client.clone())
        .list_filters(Some(group))
        .await
        .ok()?;
    let filters: Vec<(String, FilterInfo)> = lists
        .into_iter()
        .flat_map(|(b, l)| {
            l.filters
                .into_iter()
                .filter(|f| f.topic == topic && f.group == group)
                .map(move |f| (b.clone(), f))
        })
        .collect();
    (!filters.is_empty()).then(|| FilterSide::Server {
        group: group.to_owned(),
        filters,
    })
}

//! The broker's Prometheus endpoint: `GET /metrics` on `[metrics] listen`, rendering what
//! the broker counted ([`crate::metrics`]) with what its parts know at scrape time:
//! consumer lag from the committed offsets, held pulls, the store's disk and retention,
//! replication, filters, connections and access control. The names and labels are listed
//! in the README's "Metrics".

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use weir_protocol::ha::BrokerRole;
use weir_protocol::metrics::{Exposition, HttpLimits, Kind, MetricsServer, RenderFn, label_name};
use weir_protocol::{ServerStats, ServerStatsHandle};

use crate::broker::Broker;
use crate::dispatch::FAMILIES;

/// Serves the broker's metrics on `listen` until the returned server is shut down.
pub async fn start(
    broker: &Arc<Broker>,
    listen: &str,
    net: ServerStatsHandle,
) -> io::Result<MetricsServer> {
    let b = Arc::clone(broker);
    let render: RenderFn = Arc::new(move || render(&b, &net.stats()));
    let server = MetricsServer::bind(listen, render, HttpLimits::default()).await?;
    tracing::info!(addr = %server.local_addr(), "metrics endpoint listening (GET /metrics)");
    Ok(server)
}

/// The broker's metrics in the text exposition format.
pub fn render(b: &Broker, net: &ServerStats) -> String {
    let mut e = Exposition::new();
    traffic(b, &mut e);
    consumers(b, &mut e);
    store(b, &mut e);
    replication(b, &mut e);
    filters(b, &mut e);
    connections(net, &mut e);
    refusals(b, &mut e);
    e.finish()
}

fn traffic(b: &Broker, e: &mut Exposition) {
    let exists = |t: &str| b.topics.get(t).is_some();
    let produced = b.metrics.produced_by_topic(exists);
    let name = "weir_produced_messages_total";
    e.family(
        name,
        Kind::Counter,
        "Messages stored by producers' sends, by topic.",
    );
    for (t, (m, _)) in &produced {
        e.sample(name, &[("topic", t)], *m);
    }
    let name = "weir_produced_bytes_total";
    e.family(
        name,
        Kind::Counter,
        "Message body bytes stored by producers' sends, by topic.",
    );
    for (t, (_, bytes)) in &produced {
        e.sample(name, &[("topic", t)], *bytes);
    }
    let consumed = b.metrics.consumed_by_group(exists);
    let name = "weir_consumed_messages_total";
    e.family(
        name,
        Kind::Counter,
        "Messages delivered by pulls, by topic and consumer group.",
    );
    for ((t, g), (m, _)) in &consumed {
        e.sample(name, &[("topic", t), ("group", g)], *m);
    }
    let name = "weir_consumed_bytes_total";
    e.family(
        name,
        Kind::Counter,
        "Message body bytes delivered by pulls, by topic and consumer group.",
    );
    for ((t, g), (_, bytes)) in &consumed {
        e.sample(name, &[("topic", t), ("group", g)], *bytes);
    }
    e.single(
        "weir_metrics_series_dropped_total",
        Kind::Counter,
        "Topic or group series not created because limits.max_topics series exist already.",
        b.metrics
            .dropped_series
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let name = "weir_send_latency_seconds";
    e.family(name, Kind::Histogram, "Time to process a send-family request (send, batch, send-back, end transaction), from dispatch to answer.")
        .histogram(name, &[], &b.metrics.send_latency);
    let name = "weir_pull_latency_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time to process a pull, from dispatch to answer, time held by long polling included.",
    )
    .histogram(name, &[], &b.metrics.pull_latency);
    let name = "weir_requests_in_flight";
    e.family(name, Kind::Gauge, "Requests being processed, by family.");
    for f in FAMILIES {
        e.sample(name, &[("family", f.name())], b.limits.in_flight(f));
    }
    let name = "weir_requests_refused_busy_total";
    e.family(
        name,
        Kind::Counter,
        "Requests refused as busy at their family's bound on requests in flight (limits.inflight_*).",
    );
    for f in FAMILIES {
        e.sample(name, &[("family", f.name())], b.limits.refused(f));
    }
}

fn consumers(b: &Broker, e: &mut Exposition) {
    // (group, topic) → summed lag over the queues the group committed on.
    let mut lag: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (k, committed) in b.store.consumer_offsets().all() {
        if b.topics.get(&k.topic).is_none() {
            continue;
        }
        let behind = b
            .store
            .max_offset(&k.topic, k.queue_id)
            .saturating_sub(committed);
        let sum = lag.entry((k.group, k.topic)).or_default();
        *sum = sum.saturating_add(behind);
    }
    let name = "weir_consumer_lag_messages";
    e.family(name, Kind::Gauge, "Messages not yet consumed by a group: over the topic's queues it committed on, the queue's max offset less its committed offset.");
    for ((g, t), n) in &lag {
        e.sample(name, &[("group", g), ("topic", t)], *n);
    }
    e.single(
        "weir_held_pulls",
        Kind::Gauge,
        "Pulls held by long polling now.",
        b.held_pulls(),
    );
    e.single(
        "weir_held_pulls_ended_early_total",
        Kind::Counter,
        "Held pulls answered before their suspend ended, to give another connection its share of limits.inflight_pull.",
        b.held_pulls_ended_early(),
    );
}

fn store(b: &Broker, e: &mut Exposition) {
    let s = &b.store;
    if let Some(d) = s.disk_usage() {
        e.single(
            "weir_store_disk_used_ratio",
            Kind::Gauge,
            "Used share of the store's disk (or quota), as last measured.",
            d.ratio,
        );
        e.single(
            "weir_store_disk_used_bytes",
            Kind::Gauge,
            "Used bytes of the store's disk (or quota), as last measured.",
            d.used_bytes,
        );
        e.single(
            "weir_store_disk_capacity_bytes",
            Kind::Gauge,
            "Capacity of the store's disk (or quota), bytes.",
            d.capacity_bytes,
        );
    }
    e.single(
        "weir_store_writes_refused",
        Kind::Gauge,
        "1 while the store refuses appends (disk full or a failed sync), else 0.",
        u64::from(s.write_refusal().is_some()),
    );
    let r = s.retention_totals();
    let name = "weir_store_retention_deleted_segments_total";
    e.family(
        name,
        Kind::Counter,
        "Commit log segments deleted by retention, by reason.",
    )
    .sample(name, &[("reason", "age")], r.segments_by_age)
    .sample(name, &[("reason", "disk_pressure")], r.segments_by_pressure);
    e.single(
        "weir_store_retention_deleted_bytes_total",
        Kind::Counter,
        "Commit log bytes deleted by retention.",
        r.bytes,
    );
    e.single(
        "weir_store_commit_log_max_offset_bytes",
        Kind::Gauge,
        "End of the commit log (bytes ever appended).",
        s.commit_log_max_offset(),
    );
    let name = "weir_store_flush_latency_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time of each commit log sync to disk (group commit, periodic flush, checkpoint).",
    )
    .histogram(name, &[], &b.metrics.flush_latency);
}

fn replication(b: &Broker, e: &mut Exposition) {
    let role = b.replication.role;
    let replicates = role == BrokerRole::Slave || b.config.ha_listen.is_some();
    let c = &b.config;
    let name = "weir_broker_info";
    e.family(
        name,
        Kind::Gauge,
        "This broker: its cluster, name, id and role (value 1).",
    )
    .sample(
        name,
        &[
            ("cluster", &c.cluster),
            ("broker", &c.broker_name),
            ("id", &c.broker_id.to_string()),
            ("role", &label_name(role.as_str())),
        ],
        1u64,
    );
    if !replicates {
        return;
    }
    let s = b.ha_status();
    e.single(
        "weir_replication_lag_bytes",
        Kind::Gauge,
        "Master: bytes its slowest slave is behind; slave: bytes it is behind its master.",
        s.lag_bytes,
    );
    e.single(
        "weir_replication_lag_seconds",
        Kind::Gauge,
        "Age of the oldest byte not yet replicated (0 when caught up).",
        s.lag_ms as f64 / 1e3,
    );
    e.single(
        "weir_replication_connected",
        Kind::Gauge,
        "Master: slaves connected; slave: 1 while streaming from its master.",
        u64::from(s.connected),
    );
    e.single(
        "weir_replication_diverged",
        Kind::Gauge,
        "Slave: 1 once its log was found to differ from its master's.",
        u64::from(s.diverged.is_some()),
    );
}

fn filters(b: &Broker, e: &mut Exposition) {
    let list = b.filters.list(None).filters;
    let per = |e: &mut Exposition,
               name: &str,
               kind,
               help,
               v: &dyn Fn(&weir_protocol::filter::FilterStats) -> u64| {
        e.family(name, kind, help);
        for f in &list {
            e.sample(
                name,
                &[("group", &f.group), ("topic", &f.topic)],
                v(&f.stats),
            );
        }
    };
    per(
        e,
        "weir_filter_calls_total",
        Kind::Counter,
        "Batch calls of a group's filter that returned verdicts.",
        &|s| s.calls,
    );
    per(
        e,
        "weir_filter_messages_in_total",
        Kind::Counter,
        "Messages given to a group's filter.",
        &|s| s.messages_in,
    );
    per(
        e,
        "weir_filter_messages_kept_total",
        Kind::Counter,
        "Messages a group's filter kept.",
        &|s| s.messages_kept,
    );
    let name = "weir_filter_call_seconds_total";
    e.family(
        name,
        Kind::Counter,
        "Time spent in a group's filter's successful calls.",
    );
    for f in &list {
        e.sample(
            name,
            &[("group", &f.group), ("topic", &f.topic)],
            f.stats.call_nanos as f64 / 1e9,
        );
    }
    let name = "weir_filter_seconds_per_message";
    e.family(
        name,
        Kind::Gauge,
        "Average time of a group's filter per message, in successful calls so far.",
    );
    for f in &list {
        if let Some(ns) = f.stats.nanos_per_message() {
            e.sample(
                name,
                &[("group", &f.group), ("topic", &f.topic)],
                ns as f64 / 1e9,
            );
        }
    }
    let name = "weir_filter_failures_total";
    e.family(
        name,
        Kind::Counter,
        "Failed calls of a group's filter, by cause.",
    );
    for f in &list {
        let s = &f.stats;
        for (cause, n) in [
            ("guest_error", s.guest_errors),
            ("trap", s.traps),
            ("deadline", s.deadlines),
            ("memory_exhausted", s.memory_exhausted),
            ("wrong_verdicts", s.wrong_verdicts),
        ] {
            e.sample(
                name,
                &[("group", &f.group), ("topic", &f.topic), ("cause", cause)],
                n,
            );
        }
    }
    let name = "weir_filter_failed";
    e.family(name, Kind::Gauge, "1 while a group's filter is marked failed (its pulls fail until a new version is uploaded).");
    for f in &list {
        e.sample(
            name,
            &[("group", &f.group), ("topic", &f.topic)],
            u64::from(f.failed.is_some()),
        );
    }
}

fn connections(net: &ServerStats, e: &mut Exposition) {
    e.connections("weir_", net);
}

fn refusals(b: &Broker, e: &mut Exposition) {
    let name = "weir_request_errors_total";
    e.family(
        name,
        Kind::Counter,
        "Requests answered with an error, by status (refusals such as system_busy included).",
    );
    for (code, n) in b.metrics.errors() {
        e.sample(name, &[("code", &label_name(code.as_str()))], n);
    }
    let a = b.acl.stats.counts();
    e.single(
        "weir_acl_enabled",
        Kind::Gauge,
        "1 while access control is on.",
        u64::from(b.acl.enabled()),
    );
    e.single(
        "weir_acl_allowed_total",
        Kind::Counter,
        "Requests access control let through.",
        a.allowed,
    );
    let name = "weir_acl_refusals_total";
    e.family(
        name,
        Kind::Counter,
        "Requests access control refused, by cause.",
    );
    for (cause, n) in [
        ("unsigned", a.unsigned),
        ("unknown_key", a.unknown_key),
        ("bad_signature", a.bad_signature),
        ("expired", a.expired),
        ("replayed", a.replayed),
        ("too_many_sessions", a.too_many_sessions),
        ("denied_topic_pub", a.denied_topic_pub),
        ("denied_topic_sub", a.denied_topic_sub),
        ("denied_topic_admin", a.denied_topic_admin),
        ("denied_group_pub", a.denied_group_pub),
        ("denied_group_sub", a.denied_group_sub),
        ("denied_group_admin", a.denied_group_admin),
        ("denied_cluster", a.denied_cluster),
    ] {
        e.sample(name, &[("cause", cause)], n);
    }
    e.single(
        "weir_acl_reloads_total",
        Kind::Counter,
        "ACL file reloads put in force.",
        a.reloads,
    );
    e.single(
        "weir_acl_reload_failures_total",
        Kind::Counter,
        "ACL file reloads refused (the file did not parse).",
        a.reload_failures,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerConfig;

    async fn broker(dir: &std::path::Path, tweak: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
        let mut config = BrokerConfig {
            store: weir_store::StoreConfig {
                disk_max_used_ratio: 1.0,
                disk_full_ratio: 1.0,
                ..weir_store::StoreConfig::new(dir.to_path_buf())
            },
            ..BrokerConfig::default()
        };
        tweak(&mut config);
        crate::open(config, "127.0.0.1:10911".into()).await.unwrap()
    }

    #[tokio::test]
    async fn replication_is_shown_only_where_there_is_some() {
        let dir = tempfile::tempdir().unwrap();
        let slave = broker(&dir.path().join("s"), |c| {
            c.role = BrokerRole::Slave;
            c.broker_id = 1;
            c.master_ha_addr = Some("127.0.0.1:1".into());
        })
        .await;
        let text = render(&slave, &ServerStats::default());
        assert!(text.contains("role=\"slave\"} 1\n"), "{text}");
        assert!(text.contains("\nweir_replication_lag_bytes 0\n"), "{text}");
        assert!(text.contains("\nweir_replication_connected 0\n"), "{text}");
        assert!(text.contains("\nweir_replication_diverged 0\n"), "{text}");
        slave.store.shutdown().unwrap();

        let alone = broker(&dir.path().join("m"), |_| {}).await;
        let text = render(&alone, &ServerStats::default());
        assert!(text.contains("role=\"async_master\"} 1\n"), "{text}");
        assert!(!text.contains("weir_replication_"), "{text}");
        alone.store.shutdown().unwrap();
    }
}

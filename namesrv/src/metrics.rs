//! The name server's Prometheus endpoint: `GET /metrics` on `[metrics] listen`, with its
//! connections, the brokers, groups and topics it knows, route lookups and registrations.
//! The names are listed in the README's "Metrics".

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_protocol::metrics::{Exposition, HttpLimits, Kind, MetricsServer, RenderFn};
use weir_protocol::{ServerStats, ServerStatsHandle};

use crate::NameServer;

/// What the name server counts as it serves.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) routes_found: AtomicU64,
    pub(crate) routes_missing: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) unregistrations: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) async fn start(
    ns: &Arc<NameServer>,
    listen: &str,
    net: ServerStatsHandle,
) -> io::Result<MetricsServer> {
    let ns = Arc::clone(ns);
    let render: RenderFn = Arc::new(move || render(&ns, &net.stats()));
    let server = MetricsServer::bind(listen, render, HttpLimits::default()).await?;
    tracing::info!(addr = %server.local_addr(), "metrics endpoint listening (GET /metrics)");
    Ok(server)
}

/// The name server's metrics in the text exposition format.
pub(crate) fn render(ns: &NameServer, net: &ServerStats) -> String {
    let (brokers, groups, topics) = {
        let t = ns.table();
        (t.live.len(), t.groups.len(), t.topics.len())
    };
    let c = &ns.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    e.connections("weir_namesrv_", net);
    e.single(
        "weir_namesrv_brokers",
        Kind::Gauge,
        "Brokers registered now (masters and slaves).",
        brokers,
    );
    e.single(
        "weir_namesrv_broker_groups",
        Kind::Gauge,
        "Broker names (a master and its slaves) registered now.",
        groups,
    );
    e.single(
        "weir_namesrv_topics",
        Kind::Gauge,
        "Topics some registered broker serves.",
        topics,
    );
    let name = "weir_namesrv_route_lookups_total";
    e.family(name, Kind::Counter, "Route lookups, by result.")
        .sample(name, &[("result", "found")], load(&c.routes_found))
        .sample(name, &[("result", "not_found")], load(&c.routes_missing));
    e.single(
        "weir_namesrv_registrations_total",
        Kind::Counter,
        "Broker registrations taken (each broker registers every register_interval_ms).",
        load(&c.registrations),
    );
    e.single(
        "weir_namesrv_unregistrations_total",
        Kind::Counter,
        "Broker unregistrations taken.",
        load(&c.unregistrations),
    );
    e.single(
        "weir_namesrv_registrations_refused_total",
        Kind::Counter,
        "Registrations and unregistrations refused for lacking the cluster secret.",
        ns.refused_registrations.total(),
    );
    e.finish()
}

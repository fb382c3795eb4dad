//! WebAssembly filters of consumer groups (`wit/filter.wit`): upload a component for a
//! (group, topic), list what brokers run, remove a registration.
//!
//! A filter runs on every broker that serves the topic, so uploads and removals go to the
//! master of each broker in the topic's route; listing asks every master of the cluster.

use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use weir_protocol::filter::{
    FilterList, FilterRemoved, FilterReset, FilterUploaded, ListFilters, RemoveFilter, ResetFilter,
    UploadFilter,
};
use weir_protocol::frame::DEFAULT_MAX_FRAME;
use weir_protocol::route::TopicRoute;
use weir_protocol::{CallError, ErrorCode};

use crate::{Admin, ClientError, ClientInstance, Result};

/// How long an upload may take: the broker validates, compiles and initialises the
/// component before it answers, which takes seconds for a large one.
pub const FILTER_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Components up to this size are sent as they are; larger ones gzip-compressed.
const COMPRESS_ABOVE: usize = 1 << 20;

/// `component` gzip-compressed when it is large and that makes it smaller (the broker
/// inflates a body that starts with gzip's magic bytes; a component starts with `\0asm`).
fn compress(component: Bytes) -> Bytes {
    use std::io::Write;
    if component.len() <= COMPRESS_ABOVE {
        return component;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    match enc.write_all(&component).and_then(|()| enc.finish()) {
        Ok(gz) if gz.len() < component.len() => Bytes::from(gz),
        _ => component,
    }
}

/// Room left in a frame for the upload's header (group, topic, parameters) and framing.
const HEADER_ALLOWANCE: usize = 64 << 10;

fn check_name(what: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(ClientError::Invalid(format!(
            "the filter's {what} is empty: a filter belongs to one consumer group and one topic"
        )));
    }
    Ok(())
}

/// (broker name, master address) of every broker of the route that has a master.
fn route_masters(route: &TopicRoute, topic: &str) -> Result<Vec<(String, String)>> {
    let masters = crate::admin::masters(&route.brokers);
    if masters.is_empty() {
        return Err(ClientError::NoRoute {
            topic: topic.to_owned(),
            detail: "no broker of the route has a master".into(),
        });
    }
    Ok(masters)
}

/// A broker's error, naming the broker as well as its address.
fn named(name: &str, addr: &str, e: ClientError) -> ClientError {
    match e {
        ClientError::Broker { error, .. } => ClientError::Broker {
            broker: format!("{name} ({addr})"),
            error,
        },
        e => e,
    }
}

/// The route of a topic filters are managed for; a topic without one is an error that
/// says so (a filter can only run where the topic is served).
async fn filter_route(client: &ClientInstance, topic: &str) -> Result<Vec<(String, String)>> {
    let route = match client.route(topic, true).await {
        Ok(r) => r,
        Err(ClientError::NoRoute { topic, detail }) => {
            return Err(ClientError::NoRoute {
                detail: format!(
                    "{detail} (a filter runs on the brokers that serve its topic: create the topic first)"
                ),
                topic,
            });
        }
        Err(e) => return Err(e),
    };
    route_masters(&route, topic)
}

impl Admin {
    /// Uploads `component` (a WebAssembly component of the `message-filter` world) as the
    /// filter of `group` for `topic`, with `params` for its `init`, to the master of every
    /// broker that serves the topic, all at once. Returns, per broker in route order, what
    /// the broker registered. A broker that refuses the component answers
    /// [`ErrorCode::FilterRejected`]; the first broker error is returned (brokers that
    /// accepted keep the new version).
    pub async fn upload_filter(
        &self,
        group: &str,
        topic: &str,
        component: impl Into<Bytes>,
        params: Vec<(String, String)>,
    ) -> Result<Vec<(String, FilterUploaded)>> {
        self.upload_filter_with_memory(group, topic, component, params, None)
            .await
    }

    /// [`Admin::upload_filter`] asking a memory cap of `memory` bytes for each instance
    /// (`None`: the broker's default). A broker refuses a cap above its
    /// `filter.max_memory_limit`. A component over 1 MiB travels gzip-compressed, so the
    /// engines of JavaScript and Python filters (10-20 MB) fit a request.
    pub async fn upload_filter_with_memory(
        &self,
        group: &str,
        topic: &str,
        component: impl Into<Bytes>,
        params: Vec<(String, String)>,
        memory: Option<u64>,
    ) -> Result<Vec<(String, FilterUploaded)>> {
        let component: Bytes = component.into();
        check_name("consumer group", group)?;
        check_name("topic", topic)?;
        if component.is_empty() {
            return Err(ClientError::Invalid("the filter component is empty".into()));
        }
        if let Some((k, _)) = params.iter().find(|(k, _)| k.is_empty()) {
            return Err(ClientError::Invalid(format!(
                "filter parameter {k:?} has an empty name"
            )));
        }
        if memory == Some(0) {
            return Err(ClientError::Invalid(
                "the filter's memory cap is 0 bytes".into(),
            ));
        }
        let component = compress(component);
        let header: usize = group.len()
            + topic.len()
            + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if component.len() + header + HEADER_ALLOWANCE > DEFAULT_MAX_FRAME {
            return Err(ClientError::Invalid(format!(
                "the filter component is {} bytes (gzip-compressed): more than a request carries ({} bytes)",
                component.len(),
                DEFAULT_MAX_FRAME - HEADER_ALLOWANCE - header
            )));
        }
        let masters = filter_route(&self.client, topic).await?;
        let timeout = FILTER_UPLOAD_TIMEOUT.max(self.client.config().request_timeout);
        let req = UploadFilter {
            group: group.to_owned(),
            topic: topic.to_owned(),
            params,
            memory,
        };
        let mut tasks = JoinSet::new();
        for (i, (name, addr)) in masters.iter().cloned().enumerate() {
            let (client, req, body) = (self.client.clone(), req.clone(), component.clone());
            tasks.spawn(async move {
                let r = client
                    .call_with_timeout(&addr, &req, body, timeout)
                    .await
                    .map(|(up, _)| up)
                    .map_err(|e| named(&name, &addr, e));
                (i, name, r)
            });
        }
        let mut results: Vec<Option<(String, Result<FilterUploaded>)>> =
            (0..masters.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (i, name, r) = joined.map_err(|e| {
                ClientError::Invalid(format!("an upload task ended abnormally: {e}"))
            })?;
            results[i] = Some((name, r));
        }
        let mut out = Vec::with_capacity(results.len());
        for (name, r) in results.into_iter().flatten() {
            out.push((name, r?));
        }
        Ok(out)
    }

    /// The filters every master broker of the cluster runs (those of `group` only, when
    /// given), with their counters: (broker name, list), by broker name. Empty when no
    /// broker is registered.
    pub async fn list_filters(&self, group: Option<&str>) -> Result<Vec<(String, FilterList)>> {
        if let Some(g) = group {
            check_name("consumer group", g)?;
        }
        let info = self.cluster().await?;
        let req = ListFilters {
            group: group.map(str::to_owned),
        };
        let mut out = Vec::new();
        for b in &info.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let (list, _) = self
                .client
                .call(addr, &req, Bytes::new())
                .await
                .map_err(|e| named(&b.broker_name, addr, e))?;
            out.push((b.broker_name.clone(), list));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes the filter of `group` for `topic` from every broker of the topic's route
    /// that has one: (broker name, removed version). When no broker has one, the brokers'
    /// [`ErrorCode::FilterNotFound`] error is returned.
    pub async fn remove_filter(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(String, FilterRemoved)>> {
        let req = RemoveFilter {
            group: group.to_owned(),
            topic: topic.to_owned(),
        };
        self.on_filter_masters(&req).await
    }

    /// Clears the failed mark of (group, topic)'s filter on every master of the topic that
    /// has one: (broker name, what was cleared). When no broker has one, the brokers'
    /// [`ErrorCode::FilterNotFound`] error is returned.
    pub async fn reset_filter(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(String, FilterReset)>> {
        let req = ResetFilter {
            group: group.to_owned(),
            topic: topic.to_owned(),
        };
        self.on_filter_masters(&req).await
    }

    /// Sends a request about (group, topic)'s filter to every master of the topic; a
    /// broker without that filter is left out unless none has it.
    async fn on_filter_masters<R>(&self, req: &R) -> Result<Vec<(String, R::Response)>>
    where
        R: weir_protocol::rpc::Rpc + FilterTarget,
    {
        let (group, topic) = req.target();
        check_name("consumer group", group)?;
        check_name("topic", topic)?;
        let masters = filter_route(&self.client, topic).await?;
        let mut out = Vec::new();
        let mut not_found = None;
        for (name, addr) in &masters {
            match self.client.call(addr, req, Bytes::new()).await {
                Ok((answer, _)) => out.push((name.clone(), answer)),
                Err(
                    e @ ClientError::Broker {
                        error:
                            CallError::Remote {
                                code: ErrorCode::FilterNotFound,
                                ..
                            },
                        ..
                    },
                ) => {
                    not_found.get_or_insert(named(name, addr, e));
                }
                Err(e) => return Err(named(name, addr, e)),
            }
        }
        match (out.is_empty(), not_found) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }
}

/// The (group, topic) a filter request is about.
trait FilterTarget {
    fn target(&self) -> (&str, &str);
}

impl FilterTarget for RemoveFilter {
    fn target(&self) -> (&str, &str) {
        (&self.group, &self.topic)
    }
}

impl FilterTarget for ResetFilter {
    fn target(&self) -> (&str, &str) {
        (&self.group, &self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::route::BrokerData;

    #[test]
    fn names_must_not_be_empty() {
        assert!(check_name("topic", "T").is_ok());
        let e = check_name("topic", " ").unwrap_err().to_string();
        assert!(e.contains("topic is empty"), "{e}");
    }

    #[test]
    fn a_route_without_masters_is_an_error() {
        let route = TopicRoute {
            brokers: vec![BrokerData {
                cluster: "c".into(),
                broker_name: "broker-a".into(),
                addrs: vec![(1, "127.0.0.1:1".into())],
                status: Vec::new(),
            }],
            queues: Vec::new(),
        };
        let e = route_masters(&route, "T").unwrap_err();
        assert!(matches!(e, ClientError::NoRoute { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("no broker of the route has a master")
        );
    }
}

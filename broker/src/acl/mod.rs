//! Access control: who may do what, checked for every request in one place
//! ([`Broker::dispatch`](crate::Broker::dispatch)).
//!
//! Principals, their secrets and their permissions come from a TOML file ([`rules`]) the
//! broker reloads when it changes (`service::acl_reload`); what each request needs is one
//! table ([`needs`]). A request is taken when its signature verifies (HMAC-SHA256 with the
//! principal's secret, see `weir_protocol::auth`), its timestamp is within the window, it
//! was not seen before, and the principal has every permission it needs. Every refusal is
//! its own error, names what is missing, and is counted ([`AclStats`]).

pub mod needs;
pub mod rules;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;
use weir_protocol::auth::{AuthError, ReplayGuard, Signature, Signed, now_ms};
use weir_protocol::net::Cause;

use crate::dispatch::BrokerRequest;
use crate::error::ProcessError;
use needs::{Need, NeedKind};
use rules::Rules;
pub use rules::{Perm, Principal};

/// The `[acl]` table of the broker's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AclConfig {
    /// The ACL file (TOML; see `acl::rules`). None (the default): access control is off,
    /// and a broker listening on a non-loopback address warns at start.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes, ms (default 2,000).
    pub reload_interval_ms: u64,
}

impl Default for AclConfig {
    fn default() -> Self {
        Self {
            file: None,
            reload_interval_ms: 2_000,
        }
    }
}

/// Requests refused, by cause; and taken. Each refusal cause logs at most one line per
/// 10 s (clients can cause them).
#[derive(Default)]
pub struct AclStats {
    pub allowed: AtomicU64,
    /// ACL file reloads put in force, and reloads refused (the file did not parse).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub unsigned: Cause,
    pub unknown_key: Cause,
    pub bad_signature: Cause,
    pub expired: Cause,
    pub replayed: Cause,
    pub too_many_sessions: Cause,
    pub denied_topic_pub: Cause,
    pub denied_topic_sub: Cause,
    pub denied_topic_admin: Cause,
    pub denied_group_pub: Cause,
    pub denied_group_sub: Cause,
    pub denied_group_admin: Cause,
    pub denied_cluster: Cause,
}

/// A copy of [`AclStats`]' counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AclCounts {
    pub allowed: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub unsigned: u64,
    pub unknown_key: u64,
    pub bad_signature: u64,
    pub expired: u64,
    pub replayed: u64,
    pub too_many_sessions: u64,
    /// Refusals for a missing permission, all kinds together.
    pub denied: u64,
    pub denied_topic_pub: u64,
    pub denied_topic_sub: u64,
    pub denied_topic_admin: u64,
    pub denied_group_pub: u64,
    pub denied_group_sub: u64,
    pub denied_group_admin: u64,
    pub denied_cluster: u64,
}

impl AclStats {
    pub fn counts(&self) -> AclCounts {
        let d = [
            self.denied_topic_pub.total(),
            self.denied_topic_sub.total(),
            self.denied_topic_admin.total(),
            self.denied_group_pub.total(),
            self.denied_group_sub.total(),
            self.denied_group_admin.total(),
            self.denied_cluster.total(),
        ];
        AclCounts {
            allowed: self.allowed.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            unsigned: self.unsigned.total(),
            unknown_key: self.unknown_key.total(),
            bad_signature: self.bad_signature.total(),
            expired: self.expired.total(),
            replayed: self.replayed.total(),
            too_many_sessions: self.too_many_sessions.total(),
            denied: d.iter().sum(),
            denied_topic_pub: d[0],
            denied_topic_sub: d[1],
            denied_topic_admin: d[2],
            denied_group_pub: d[3],
            denied_group_sub: d[4],
            denied_group_admin: d[5],
            denied_cluster: d[6],
        }
    }

    fn denied(&self, kind: NeedKind) -> &Cause {
        match kind {
            NeedKind::TopicPub => &self.denied_topic_pub,
            NeedKind::TopicSub => &self.denied_topic_sub,
            NeedKind::TopicAdmin => &self.denied_topic_admin,
            NeedKind::GroupPub => &self.denied_group_pub,
            NeedKind::GroupSub => &self.denied_group_sub,
            NeedKind::GroupAdmin => &self.denied_group_admin,
            NeedKind::Cluster => &self.denied_cluster,
        }
    }

    fn auth_failed(&self, e: &AuthError) -> &Cause {
        match e {
            AuthError::Unsigned | AuthError::Malformed(_) | AuthError::InvalidCredentials(_) => {
                &self.unsigned
            }
            AuthError::UnknownKey(_) => &self.unknown_key,
            AuthError::BadSignature(_) => &self.bad_signature,
            AuthError::Expired { .. } | AuthError::BeforeStart { .. } => &self.expired,
            AuthError::Replayed { .. } | AuthError::TooLate { .. } => &self.replayed,
            AuthError::TooManySessions { .. } => &self.too_many_sessions,
        }
    }
}

/// A request's signed parts, as it arrived (given to dispatch when ACL is on).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub code: u16,
    pub oneway: bool,
    pub auth: Bytes,
    pub header: Bytes,
    pub body: Bytes,
}

/// The broker's access control: the rules in force (none: off), the replay guard, counts.
pub struct Acl {
    rules: RwLock<Option<Arc<Rules>>>,
    guard: ReplayGuard,
    pub stats: AclStats,
}

impl Acl {
    /// Access control with `rules` (None: off).
    pub fn new(rules: Option<Rules>) -> Self {
        // What was seen before a restart is not remembered: nothing signed before it taken.
        let guard = match &rules {
            Some(r) => ReplayGuard::new(r.window_ms, r.max_sessions_per_key),
            None => ReplayGuard::new(120_000, 1),
        }
        .not_before(now_ms());
        Self {
            rules: RwLock::new(rules.map(Arc::new)),
            guard,
            stats: AclStats::default(),
        }
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &std::path::Path) -> Result<Rules, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Rules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn enabled(&self) -> bool {
        self.rules().is_some()
    }

    fn rules(&self) -> Option<Arc<Rules>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `rules` in force (a reload). The replay guard keeps what it saw (those
    /// requests stay refused), under the new window and session bound.
    pub fn replace(&self, rules: Rules) {
        self.guard
            .set_limits(rules.window_ms, rules.max_sessions_per_key);
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(rules));
    }

    /// Takes or refuses `req`: its principal, or None while access control is off.
    /// `client_groups` gives a known client's producer and consumer groups: only a
    /// principal in all of them may unregister it (which releases its queue locks).
    pub fn check(
        &self,
        signed: Option<&SignedRequest>,
        req: &BrokerRequest,
        client_groups: impl FnOnce(&str) -> Option<(Vec<String>, Vec<String>)>,
    ) -> Result<Option<Arc<Principal>>, ProcessError> {
        let Some(rules) = self.rules() else {
            return Ok(None);
        };
        let principal = match self.authenticate(&rules, signed) {
            Ok(principal) => principal,
            Err(e) => {
                self.stats.auth_failed(&e).record(|count| {
                    warn!(error = %e, count, "refused requests failing authentication: {count} since the last report, the latest shown")
                });
                return Err(ProcessError::Auth(e));
            }
        };
        self.require(&principal, needs::needs(req))?;
        if let BrokerRequest::UnregisterClient(r) = req
            && let Some((mut producers, mut consumers)) = client_groups(&r.client_id)
        {
            // Leaving named groups only needs those of them the client is in.
            if r.producer_group.is_some() || r.consumer_group.is_some() {
                producers.retain(|g| r.producer_group.as_ref() == Some(g));
                consumers.retain(|g| r.consumer_group.as_ref() == Some(g));
            }
            let needs = producers
                .iter()
                .map(|g| Need::Group(g, Perm::PUB))
                .chain(consumers.iter().map(|g| Need::Group(g, Perm::SUB)));
            self.require(&principal, needs)?;
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        Ok(Some(principal))
    }

    /// Refuses unless `principal` has every one of `needs`, naming the first missing.
    pub fn require<'a>(
        &self,
        principal: &Principal,
        needs: impl IntoIterator<Item = Need<'a>>,
    ) -> Result<(), ProcessError> {
        let key = principal.credentials.access_key();
        for need in needs {
            let has = match need {
                Need::Topic(t, p) => principal.topic(t).contains(p),
                Need::Group(g, p) => principal.group(g).contains(p),
                Need::Cluster => principal.admin,
            };
            if !has {
                let what = match need {
                    Need::Topic(t, _) => format!("; it has {} on topic {t:?}", principal.topic(t)),
                    Need::Group(g, _) => format!("; it has {} on group {g:?}", principal.group(g)),
                    Need::Cluster => String::new(),
                };
                let message = format!("access key {key:?} lacks {need}{what}");
                self.stats.denied(need.kind()).record(|count| {
                    warn!(reason = %message, count, "refused requests lacking a permission: {count} since the last report, the latest shown")
                });
                return Err(ProcessError::AccessDenied(message));
            }
        }
        Ok(())
    }

    /// The principal of a request whose signature verifies, inside the window, not seen
    /// before.
    fn authenticate(
        &self,
        rules: &Rules,
        signed: Option<&SignedRequest>,
    ) -> Result<Arc<Principal>, AuthError> {
        let signed = signed.ok_or(AuthError::Unsigned)?;
        let sig = Signature::parse(&signed.auth)?;
        let guard = &self.guard;
        let now = now_ms();
        guard.check_time(&sig, now)?;
        let principal = rules
            .principal(sig.access_key)
            .ok_or_else(|| AuthError::UnknownKey(sig.access_key.to_owned()))?;
        principal.credentials.verify(
            &sig,
            &Signed {
                oneway: signed.oneway,
                code: signed.code,
                header: &signed.header,
                body: &signed.body,
            },
        )?;
        guard.admit(&sig, now)?;
        Ok(Arc::clone(principal))
    }

    /// Sessions the replay guard holds now (bounded; for tests).
    pub fn replay_sessions(&self) -> usize {
        self.guard.sessions()
    }
}

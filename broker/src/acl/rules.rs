//! The ACL file: principals (access key and secret) and their permissions, per topic and
//! per consumer or producer group, with `*` wildcards; and how a permission is looked up.
//!
//! ```toml
//! window_secs = 120              # signed requests are taken within ±this of the clock
//! max_sessions_per_key = 10000   # connections of one access key within the window
//!
//! [[principal]]
//! access_key = "ops"
//! secret_key = "a long random secret"
//! admin = true                   # everything: the cluster, every topic and group
//!
//! [[principal]]
//! access_key = "orders-app"
//! secret_key = "another secret"
//! default_topic = "deny"         # topics not listed (default "deny")
//! default_group = "deny"         # groups not listed (default "deny")
//! topics = { "orders" = "pub", "orders.*" = "pub|sub", "audit" = "deny" }
//! groups = { "billing" = "sub", "billing-*" = "sub|admin", "order-producers" = "pub" }
//! ```
//! A name's permission comes from its exact entry, else from the matching wildcard entry
//! with the most literal characters, else from the default.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use weir_protocol::auth::Credentials;

/// Permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perm(u8);

impl Perm {
    pub const NONE: Perm = Perm(0);
    /// Send to a topic; be a producer of a group.
    pub const PUB: Perm = Perm(1);
    /// Pull from a topic; be a consumer of a group.
    pub const SUB: Perm = Perm(2);
    /// Create and delete a topic; upload and remove a group's filter, list its
    /// transactions.
    pub const ADMIN: Perm = Perm(4);
    pub const ALL: Perm = Perm(7);

    pub fn contains(self, other: Perm) -> bool {
        self.0 & other.0 == other.0
    }

    fn parse(text: &str) -> Result<Perm, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("deny") {
            return Ok(Perm::NONE);
        }
        let mut p = 0;
        for part in text.split('|') {
            p |= match part.trim().to_ascii_lowercase().as_str() {
                "pub" => Perm::PUB.0,
                "sub" => Perm::SUB.0,
                "admin" => Perm::ADMIN.0,
                other => {
                    return Err(format!(
                        "unknown permission {other:?} (pub, sub, admin joined by |, or deny)"
                    ));
                }
            };
        }
        Ok(Perm(p))
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Perm::PUB, "pub"),
            (Perm::SUB, "sub"),
            (Perm::ADMIN, "admin"),
        ]
        .into_iter()
        .filter(|(p, _)| self.contains(*p))
        .map(|(_, n)| n)
        .collect();
        if names.is_empty() {
            f.write_str("deny")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default = "default_window")]
    window_secs: u64,
    #[serde(default = "default_sessions")]
    max_sessions_per_key: usize,
    #[serde(default, rename = "principal")]
    principals: Vec<PrincipalFile>,
}

fn default_window() -> u64 {
    120
}
fn default_sessions() -> usize {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    access_key: String,
    secret_key: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    default_topic: Option<String>,
    #[serde(default)]
    default_group: Option<String>,
    #[serde(default)]
    topics: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeMap<String, String>,
}

/// Names to permissions: exact names, then wildcards (most literal characters first).
#[derive(Debug, Default)]
struct PermMap {
    exact: HashMap<String, Perm>,
    wildcards: Vec<(Vec<String>, Perm)>,
    default: Perm,
}

impl PermMap {
    fn new(entries: &BTreeMap<String, String>, default: Option<&str>) -> Result<Self, String> {
        let mut m = PermMap {
            default: default.map_or(Ok(Perm::NONE), Perm::parse)?,
            ..PermMap::default()
        };
        for (name, perm) in entries {
            let perm = Perm::parse(perm).map_err(|e| format!("{name:?}: {e}"))?;
            if name.is_empty() {
                return Err("an empty name".into());
            }
            if name.contains('*') {
                m.wildcards
                    .push((name.split('*').map(str::to_owned).collect(), perm));
            } else {
                m.exact.insert(name.clone(), perm);
            }
        }
        // Most literal characters first; a stable sort keeps the file's (sorted) order.
        m.wildcards.sort_by_key(|(parts, _)| {
            std::cmp::Reverse(parts.iter().map(String::len).sum::<usize>())
        });
        Ok(m)
    }

    fn get(&self, name: &str) -> Perm {
        if let Some(p) = self.exact.get(name) {
            return *p;
        }
        self.wildcards
            .iter()
            .find(|(parts, _)| glob(parts, name))
            .map_or(self.default, |(_, p)| *p)
    }
}

/// Whether `name` matches the pattern split at its `*`s.
fn glob(parts: &[String], name: &str) -> bool {
    let [first, middle @ .., last] = parts else {
        return parts.first().is_some_and(|p| p == name);
    };
    let Some(mut rest) = name.strip_prefix(first.as_str()) else {
        return false;
    };
    for p in middle {
        match rest.find(p.as_str()) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
}

/// One principal's rights.
#[derive(Debug)]
pub struct Principal {
    pub credentials: Credentials,
    pub admin: bool,
    topics: PermMap,
    groups: PermMap,
}

impl Principal {
    pub fn topic(&self, topic: &str) -> Perm {
        if self.admin {
            Perm::ALL
        } else {
            self.topics.get(topic)
        }
    }

    pub fn group(&self, group: &str) -> Perm {
        if self.admin {
            Perm::ALL
        } else {
            self.groups.get(group)
        }
    }
}

/// A loaded ACL file.
#[derive(Debug)]
pub struct Rules {
    pub window_ms: u64,
    pub max_sessions_per_key: usize,
    principals: HashMap<String, Arc<Principal>>,
}

impl Rules {
    /// Parses an ACL file's text; the error names the key or principal at fault.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.window_secs == 0 || file.window_secs > 3600 {
            return Err("window_secs must be within 1..=3600".into());
        }
        if file.max_sessions_per_key == 0 || file.max_sessions_per_key > 1_000_000 {
            return Err("max_sessions_per_key must be within 1..=1000000".into());
        }
        let mut principals = HashMap::new();
        for p in file.principals {
            let key = p.access_key.clone();
            let at = |e: String| format!("principal {key:?}: {e}");
            let credentials =
                Credentials::new(p.access_key, p.secret_key).map_err(|e| at(e.to_string()))?;
            let principal = Principal {
                credentials,
                admin: p.admin,
                topics: PermMap::new(&p.topics, p.default_topic.as_deref())
                    .map_err(|e| at(format!("topics: {e}")))?,
                groups: PermMap::new(&p.groups, p.default_group.as_deref())
                    .map_err(|e| at(format!("groups: {e}")))?,
            };
            if principals
                .insert(key.clone(), Arc::new(principal))
                .is_some()
            {
                return Err(at("listed twice".into()));
            }
        }
        // Nobody could do anything: a file caught half written (truncated, then filled) by
        // the reload would refuse every request until fixed, an administrator's included.
        if principals.is_empty() {
            return Err("no [[principal]]: every request would be refused (to refuse everyone on purpose, list one principal with no rights)".into());
        }
        Ok(Rules {
            window_ms: file.window_secs * 1000,
            max_sessions_per_key: file.max_sessions_per_key,
            principals,
        })
    }

    pub fn principal(&self, access_key: &str) -> Option<&Arc<Principal>> {
        self.principals.get(access_key)
    }

    pub fn len(&self) -> usize {
        self.principals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_resolve_exact_then_longest_wildcard_then_default() {
        let rules = Rules::parse(
            r#"
            [[principal]]
            access_key = "app"
            secret_key = "s"
            default_topic = "sub"
            topics = { "orders" = "pub", "orders*" = "pub|sub", "orders.eu.*" = "deny", "*-audit" = "admin" }
            groups = { "g*" = "sub", "g-admin" = "sub|admin" }
            [[principal]]
            access_key = "root"
            secret_key = "s"
            admin = true
            "#,
        )
        .unwrap();
        let app = rules.principal("app").unwrap();
        assert_eq!(app.topic("orders"), Perm::PUB);
        assert_eq!(app.topic("orders.us"), Perm(3));
        assert_eq!(app.topic("orders.eu.x"), Perm::NONE);
        assert_eq!(app.topic("x-audit"), Perm::ADMIN);
        assert_eq!(app.topic("other"), Perm::SUB);
        assert_eq!(app.group("g1"), Perm::SUB);
        assert_eq!(app.group("g-admin"), Perm(6));
        assert_eq!(app.group("h"), Perm::NONE);
        assert_eq!(rules.principal("root").unwrap().group("h"), Perm::ALL);
        assert!(rules.principal("nobody").is_none());
        assert_eq!(Perm(3).to_string(), "pub|sub");
        assert_eq!(Perm::NONE.to_string(), "deny");
    }

    #[test]
    fn bad_files_are_refused_naming_the_fault() {
        for (text, says) in [
            ("bogus = 1", "bogus"),
            (
                "[[principal]]\naccess_key = \"a\"\nsecret_key = \"s\"\ncolour = 1",
                "colour",
            ),
            (
                "[[principal]]\naccess_key = \"a\"\nsecret_key = \"s\"\ntopics = { t = \"write\" }",
                "write",
            ),
            (
                "[[principal]]\naccess_key = \"a\"\nsecret_key = \"\"",
                "secret",
            ),
            (
                "[[principal]]\naccess_key = \"a\"\nsecret_key = \"s\"\n[[principal]]\naccess_key = \"a\"\nsecret_key = \"t\"",
                "twice",
            ),
            ("window_secs = 0", "window_secs"),
            // Empty or truncated: every request would be refused.
            ("", "no [[principal]]"),
            ("window_secs = 120\n", "no [[principal]]"),
        ] {
            let e = Rules::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(glob(&["a".into(), "".into()], "abc"));
        assert!(!glob(&["a".into(), "c".into()], "ab"));
        assert!(glob(&["".into(), "b".into(), "".into()], "abc"));
        assert!(!glob(&["ab".into(), "ba".into()], "aba"));
    }
}

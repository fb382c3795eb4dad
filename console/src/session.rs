//! Sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie names an entry of
//! this process's table, holding the session's CSRF token and, after a login, the client
//! that signs its requests with the operator's credentials.
//!
//! Invariants: the table holds at most [`MAX_SESSIONS`] entries (a client making new
//! cookies on every request evicts the idlest session without a login, never grows memory
//! nor logs an operator out while such sessions remain); a request naming a host other than
//! an IP address, `localhost` or an allowed name is refused (DNS rebinding); a session idle for
//! [`IDLE`] is gone; a login gets a new id (no fixation); every non-GET request must
//! carry the session's token in `X-CSRF-Token`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_SECURITY_POLICY, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_client::ClientInstance;

use crate::AppState;
use crate::error::ApiError;

pub const COOKIE_NAME: &str = "weir_console";
pub const CSRF_HEADER: &str = "x-csrf-token";
const MAX_SESSIONS: usize = 10_000;
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Only the console's own files; no inline script or style, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Clone)]
struct Session {
    csrf: String,
    /// (access key, the client signing with it), after a login.
    login: Option<(String, ClientInstance)>,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

/// What a handler knows of its request's session.
#[derive(Clone)]
pub struct Ctx {
    pub id: String,
    pub csrf: String,
    /// The access key logged in with, if any.
    pub user: Option<String>,
    /// Signs with the session's credentials when logged in.
    pub client: ClientInstance,
}

/// 128 random bits, hex.
pub fn random_token() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("no random numbers from the operating system: {e}"),
        login: false,
    })?;
    Ok(hex::encode(b))
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
}

pub fn set_cookie(id: &str) -> HeaderValue {
    // The id is hex: always a valid header value.
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("weir_console=; Path=/"))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session of `id`, or a new one: (id, session, whether it is new).
    fn get_or_create(&self, id: Option<String>) -> Result<(String, Session, bool), ApiError> {
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(id) = id
            && let Some(s) = table.get_mut(&id)
            && now.duration_since(s.last_seen) < IDLE
        {
            s.last_seen = now;
            return Ok((id, s.clone(), false));
        }
        let id = random_token()?;
        let s = Session {
            csrf: random_token()?,
            login: None,
            last_seen: now,
        };
        Self::make_room(&mut table, now);
        table.insert(id.clone(), s.clone());
        Ok((id, s, true))
    }

    fn make_room(table: &mut HashMap<String, Session>, now: Instant) {
        if table.len() < MAX_SESSIONS {
            return;
        }
        table.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        while table.len() >= MAX_SESSIONS {
            // Sessions without a login go first: anyone can make those (a request without
            // a cookie), and 10,000 of them logged every operator out.
            let Some(idlest) = table
                .iter()
                .min_by_key(|(_, s)| (s.login.is_some(), s.last_seen))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            table.remove(&idlest);
        }
    }

    /// Replaces session `old` by a new one logged in as `access_key`: (new id, new token).
    pub fn login(
        &self,
        old: &str,
        access_key: &str,
        client: ClientInstance,
    ) -> Result<(String, String), ApiError> {
        let (id, csrf) = (random_token()?, random_token()?);
        let mut table = self.lock();
        table.remove(old);
        let now = Instant::now();
        Self::make_room(&mut table, now);
        table.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                login: Some((access_key.to_owned(), client)),
                last_seen: now,
            },
        );
        Ok((id, csrf))
    }

    /// Forgets the credentials of session `id`.
    pub fn logout(&self, id: &str) {
        if let Some(s) = self.lock().get_mut(id) {
            s.login = None;
        }
    }
}

/// Finds or makes the request's session, refuses a state-changing request without the
/// session's CSRF token, and adds the security headers to every response.
pub async fn layer(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let host = requested_host(&req);
    let mut resp = if let Some(h) = host.filter(|h| !host_allowed(h, &state.allowed_hosts)) {
        (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this console does not answer to the host {h:?}: open it by its IP address or localhost, or start it with --allowed-host {h}"
            ),
        )
            .into_response()
    } else {
        match session_of(&state, &mut req) {
            Ok(new_cookie) => {
                let mut resp = next.run(req).await;
                if let Some(id) = new_cookie {
                    resp.headers_mut().append(SET_COOKIE, set_cookie(&id));
                }
                resp
            }
            Err(e) => e.into_response(),
        }
    };
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.entry(axum::http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The host (without port, lower case) the request names: its `Host` header, or its URI's
/// authority (HTTP/2); `None` when it names none.
fn requested_host(req: &Request) -> Option<String> {
    let authority = match req.headers().get(axum::http::header::HOST) {
        Some(v) => v.to_str().unwrap_or("\u{fffd}").to_owned(),
        None => req.uri().authority()?.as_str().to_owned(),
    };
    // `[v6]:port`, `[v6]`, `name:port` or `name`.
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h),
    };
    Some(host.to_ascii_lowercase())
}

/// An IP address, `localhost`, or a name the operator allowed: never a name a web page
/// could point at the console (DNS rebinding), for which a browser would send the page's
/// own session-less, same-origin requests to it.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || allowed.iter().any(|a| a == host)
}

/// Puts the session's [`Ctx`] in the request: the new session's id when one was made.
fn session_of(state: &AppState, req: &mut Request) -> Result<Option<String>, ApiError> {
    let (id, s, new) = state.sessions.get_or_create(cookie_value(req.headers()))?;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if new || !same(sent, s.csrf.as_bytes()) {
            return Err(ApiError::forbidden(
                "refused: this request lacks the page's CSRF token (reload the page and try again)",
            ));
        }
    }
    let (user, client) = match s.login {
        Some((user, client)) => (Some(user), client),
        None => (None, state.anonymous.clone()),
    };
    req.extensions_mut().insert(Ctx {
        id: id.clone(),
        csrf: s.csrf,
        user,
        client,
    });
    Ok(new.then_some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcd", b"abcd"));
        assert!(!same(b"abcd", b"abce"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; weir_console=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
        h.insert(COOKIE, HeaderValue::from_static("weir_consolex=1"));
        assert_eq!(cookie_value(&h), None);
    }

    #[tokio::test]
    async fn a_flood_of_new_sessions_logs_no_operator_out() {
        let s = Sessions::default();
        let (anon, _, _) = s.get_or_create(None).unwrap();
        let client = ClientInstance::new(weir_client::ClientConfig::new("127.0.0.1:1")).unwrap();
        let (ops, _) = s.login(&anon, "ops", client).unwrap();
        for _ in 0..MAX_SESSIONS + 100 {
            s.get_or_create(None).unwrap();
        }
        let (id, kept, new) = s.get_or_create(Some(ops.clone())).unwrap();
        assert_eq!((id, new), (ops, false));
        assert_eq!(kept.login.map(|(k, _)| k).as_deref(), Some("ops"));
    }

    #[test]
    fn only_addresses_localhost_and_allowed_names_are_answered() {
        let ask = |host: &str| {
            let req = Request::builder()
                .uri("/api/session")
                .header(axum::http::header::HOST, host)
                .body(axum::body::Body::empty())
                .unwrap();
            let h = requested_host(&req).unwrap();
            (h.clone(), host_allowed(&h, &["console.example".to_owned()]))
        };
        for (host, name, allowed) in [
            ("127.0.0.1:8080", "127.0.0.1", true),
            ("[::1]:8080", "::1", true),
            ("[::1]", "::1", true),
            ("10.1.2.3", "10.1.2.3", true),
            ("LocalHost:8080", "localhost", true),
            ("Console.Example:8080", "console.example", true),
            ("attacker.example:8080", "attacker.example", false),
            ("127.0.0.1.nip.io:8080", "127.0.0.1.nip.io", false),
            (
                "localhost.attacker.example",
                "localhost.attacker.example",
                false,
            ),
        ] {
            assert_eq!(ask(host), (name.to_owned(), allowed), "{host}");
        }
    }

    #[test]
    fn the_table_stays_bounded() {
        let s = Sessions::default();
        for _ in 0..MAX_SESSIONS + 50 {
            s.get_or_create(None).unwrap();
        }
        assert!(s.lock().len() <= MAX_SESSIONS);
    }
}

//! The routes: the pages (one embedded shell), their JSON twins under `/api/`, login.
//!
//! Round trips per page (counted from the handlers; the shell and its two assets aside):
//! Cluster 1 (name server) + 1 per broker, concurrently; Topics and Groups lists 1 (the
//! name server's topic list, paged here); a topic 1 route + 1 per master; a group
//! 1 cluster view + 2 per master (+ 1 route and 1 per master for its dead letters); a
//! message's delivery trail 3; a filter preview 1 route + 2 per readable queue.

mod cluster;
mod filters;
mod groups;
mod messages;
mod preview;
mod topics;
mod trail;
mod transactions;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_client::{Admin, ClientInstance};

use crate::AppState;
use crate::assets;
use crate::error::{ApiError, ApiResult};
use crate::session::{self, Ctx};

/// Uploads and previews carry a component (up to the brokers' 10 MiB by default) in
/// base64.
const UPLOAD_BODY_LIMIT: usize = 24 << 20;
/// Every other request body.
const BODY_LIMIT: usize = 1 << 20;

/// Takes a slot of `slots` (refused with 429, saying `busy`, when none is free), then
/// reads the request's body as JSON (at most [`UPLOAD_BODY_LIMIT`]): a refused request
/// costs no memory, and at most as many bodies as slots are held.
async fn json_in_slot<'a, T: serde::de::DeserializeOwned>(
    slots: &'a tokio::sync::Semaphore,
    req: axum::extract::Request,
    busy: &str,
    what: &str,
) -> ApiResult<(tokio::sync::SemaphorePermit<'a>, T)> {
    let slot = slots
        .try_acquire()
        .map_err(|_| ApiError::too_many(busy.to_owned()))?;
    let body = axum::body::to_bytes(req.into_body(), UPLOAD_BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::bad_request(format!(
                "cannot read the request (at most {} MiB): {e}",
                UPLOAD_BODY_LIMIT >> 20
            ))
        })?;
    let value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request is not {what}: {e}")))?;
    Ok((slot, value))
}

/// Page paths: every one serves the shell, whose script renders what the path names.
const PAGES: &[&str] = &[
    "/",
    "/topics",
    "/topic",
    "/groups",
    "/group",
    "/messages",
    "/filters",
    "/transactions",
    "/login",
];

pub fn routes(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    for p in PAGES {
        r = r.route(p, get(shell));
    }
    for (path, script) in assets::SCRIPTS {
        r = r.route(path, get(move || async move { assets::js(script) }));
    }
    r.route("/assets/app.css", get(assets::css))
        .route("/api/session", get(session_info))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/topics", get(topics::list).post(topics::create))
        .route("/api/topic", get(topics::detail))
        .route("/api/topic/update", post(topics::update))
        .route("/api/topic/delete", post(topics::delete))
        .route("/api/topic/send", post(topics::send))
        .route("/api/groups", get(groups::list))
        .route("/api/group", get(groups::detail))
        .route("/api/group/reset", post(groups::reset))
        .route("/api/group/resend", post(groups::resend_dead_letter))
        .route("/api/messages/key", get(messages::by_key))
        .route("/api/messages/id", get(messages::by_id))
        .route("/api/messages/time", get(messages::by_time))
        .route("/api/messages/trail", get(trail::trail))
        .route("/api/filters", get(filters::list))
        // These read their bodies themselves (at most UPLOAD_BODY_LIMIT), once their slot
        // is taken.
        .route("/api/filters/upload", post(filters::upload))
        .route("/api/filters/preview", post(preview::preview))
        .route("/api/filters/remove", post(filters::remove))
        .route("/api/filters/reset", post(filters::reset))
        .route("/api/transactions", get(transactions::list))
        .route("/api/transactions/resolve", post(transactions::resolve))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::layer,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such page".into(),
        login: false,
    }
}

/// The shell, with the session's CSRF token in a `<meta>` (hex: nothing to escape).
async fn shell(Extension(ctx): Extension<Ctx>) -> Response {
    let page = assets::INDEX_HTML.replace("{{csrf}}", &ctx.csrf);
    ([(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn session_info(Extension(ctx): Extension<Ctx>) -> Json<Value> {
    Json(json!({ "user": ctx.user, "csrf": ctx.csrf }))
}

#[derive(Deserialize)]
struct Login {
    access_key: String,
    secret: String,
}

/// Checks the credentials against every broker (a signed request each) before keeping
/// them; a new session id and token follow.
async fn login(
    State(st): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    Json(l): Json<Login>,
) -> ApiResult<Response> {
    if l.access_key.trim().is_empty() || l.secret.is_empty() {
        return Err(ApiError::bad_request("give an access key and its secret"));
    }
    let config = st.base.clone().with_credentials(&l.access_key, &l.secret)?;
    let client = ClientInstance::new(config)?;
    Admin::new(client.clone()).broker_stats().await?;
    let (id, csrf) = st.sessions.login(&ctx.id, &l.access_key, client)?;
    tracing::info!(access_key = %l.access_key, "console login");
    let mut resp = Json(json!({ "user": l.access_key, "csrf": csrf })).into_response();
    resp.headers_mut()
        .append(SET_COOKIE, session::set_cookie(&id));
    Ok(resp)
}

async fn logout(State(st): State<Arc<AppState>>, Extension(ctx): Extension<Ctx>) -> Json<Value> {
    st.sessions.logout(&ctx.id);
    Json(json!({ "user": null }))
}

/// `page` (from 1) and `per_page` (1..=500, default 100) of a list.
#[derive(Deserialize, Default)]
pub struct Paging {
    pub page: Option<usize>,
    pub per_page: Option<usize>,
    /// Only names containing this.
    pub q: Option<String>,
}

impl Paging {
    /// The page of `items` and its JSON paging fields.
    pub fn apply<T: Clone>(&self, items: &[T]) -> (Vec<T>, Value) {
        let per_page = self.per_page.unwrap_or(100).clamp(1, 500);
        let pages = items.len().div_ceil(per_page).max(1);
        let page = self.page.unwrap_or(1).clamp(1, pages);
        let start = (page - 1).saturating_mul(per_page).min(items.len());
        let end = start.saturating_add(per_page).min(items.len());
        let meta = json!({
            "page": page, "pages": pages, "per_page": per_page, "total": items.len(),
        });
        (items[start..end].to_vec(), meta)
    }
}

/// A required, non-empty text field.
pub fn required<'a>(what: &str, v: &'a str) -> ApiResult<&'a str> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("give the {what}")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_clamps() {
        let items: Vec<u32> = (0..1000).collect();
        let p = Paging {
            page: Some(3),
            per_page: Some(100),
            q: None,
        };
        let (page, meta) = p.apply(&items);
        assert_eq!(page.first(), Some(&200));
        assert_eq!(page.len(), 100);
        assert_eq!(meta["pages"], 10);
        // per_page 0 is 1; a page past the last is the last.
        let p = Paging {
            page: Some(5000),
            per_page: Some(0),
            q: None,
        };
        let (page, meta) = p.apply(&items);
        assert_eq!(meta["page"], 1000);
        assert_eq!(page, vec![999]);
        let (page, meta) = Paging::default().apply::<u32>(&[]);
        assert!(page.is_empty());
        assert_eq!(meta["pages"], 1);
    }
}

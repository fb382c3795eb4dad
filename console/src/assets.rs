//! The pages' files, embedded in the binary: nothing is fetched from anywhere else.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The pages' scripts, by path, in the order the shell loads them: `app.js` (helpers, most
/// pages, the start) first, then the pages of their own file.
pub const SCRIPTS: [(&str, &str); 3] = [
    ("/assets/app.js", include_str!("../assets/app.js")),
    ("/assets/messages.js", include_str!("../assets/messages.js")),
    ("/assets/filters.js", include_str!("../assets/filters.js")),
];

pub fn js(script: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        script,
    )
}

pub async fn css() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

//! Shared by the broker's integration tests.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{CallError, Connection, ErrorCode, Rpc};

/// Timeout of one call in the tests.
pub const T: Duration = Duration::from_secs(10);

/// Calls `req` and expects the broker to refuse it with `code` and a message containing
/// `text`.
pub async fn expect_error<R: Rpc>(
    conn: &Connection,
    req: &R,
    body: Bytes,
    code: ErrorCode,
    text: &str,
) {
    match conn.call(req, body, T).await {
        Err(CallError::Remote { code: c, message }) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

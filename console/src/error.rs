//! Errors as the pages see them: a status and a JSON `{"error": cause}` naming the cause
//! (the broker's or name server's own words), plus `login` when credentials would help.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use weir_client::{ClientError, ErrorCode};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The cluster refused for lack of (valid) credentials: the page offers the login form.
    pub login: bool,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            login: false,
        }
    }

    /// Too many at once: the client may try again later.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            login: false,
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            login: false,
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        Self::from_ref(&e)
    }
}

impl ApiError {
    /// The page's view of a client error.
    pub fn from_ref(e: &ClientError) -> Self {
        let (status, login) = match e.code() {
            Some(ErrorCode::AuthFailed | ErrorCode::RequestExpired) => {
                (StatusCode::UNAUTHORIZED, true)
            }
            Some(ErrorCode::AccessDenied | ErrorCode::NoPermission) => {
                (StatusCode::FORBIDDEN, true)
            }
            Some(
                ErrorCode::TopicNotExist | ErrorCode::QueryNotFound | ErrorCode::FilterNotFound,
            ) => (StatusCode::NOT_FOUND, false),
            Some(
                ErrorCode::InvalidParameter
                | ErrorCode::BadRequest
                | ErrorCode::MessageIllegal
                | ErrorCode::FilterRejected
                | ErrorCode::GroupHasMembers
                | ErrorCode::TopicExistAlready,
            ) => (StatusCode::BAD_REQUEST, false),
            _ => match e {
                ClientError::Invalid(_) | ClientError::BadRecord(_) => {
                    (StatusCode::BAD_REQUEST, false)
                }
                ClientError::NoRoute { .. } => (StatusCode::NOT_FOUND, false),
                // The cluster could not be reached or failed: a gateway's error.
                _ => (StatusCode::BAD_GATEWAY, false),
            },
        };
        Self {
            status,
            message: e.to_string(),
            login,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "login": self.login });
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

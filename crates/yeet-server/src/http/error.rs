//! Error responses: always `{"error":{"code","message"}}`, with the status the code declares
//! (`yeet_proto::ErrorCode`). Internal details are logged here and never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use yeet_proto::ErrorCode;
use yeet_proto::api::ErrorBody;
use yeet_proto::error_code::INTERNAL_MESSAGE;

use crate::service::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match &e {
            ServiceError::Internal(inner) => tracing::error!(error = %inner, "request failed"),
            ServiceError::System(why) => tracing::error!(error = %why, "request failed"),
            ServiceError::Unauthorized(_) | ServiceError::Refused { .. } => {
                return ApiError::new(e.code(), e.to_string());
            }
        }
        ApiError::new(ErrorCode::Internal, INTERNAL_MESSAGE)
    }
}

impl From<yeet_proto::AuthError> for ApiError {
    fn from(e: yeet_proto::AuthError) -> Self {
        ServiceError::from(e).into()
    }
}

/// Seconds a `busy` answer asks the client to wait before it retries.
pub const BUSY_RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    /// The `Retry-After` header a refusal carries: only `busy` has one.
    pub fn retry_after(&self) -> Option<[(axum::http::HeaderName, String); 1]> {
        (self.code == ErrorCode::Busy).then(|| {
            [(
                axum::http::header::RETRY_AFTER,
                BUSY_RETRY_AFTER_SECS.to_string(),
            )]
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        // The code rides along for the audit layer, which records refusals by it.
        let code = self.code;
        let mut response = (
            self.status(),
            retry_after,
            Json(ErrorBody::new(self.code, self.message)),
        )
            .into_response();
        response.extensions_mut().insert(code);
        response
    }
}

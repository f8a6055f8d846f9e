//! api::error: every way a request can fail, mapped 1:1 to an HTTP status and a stable `code`,
//! and the one JSON shape every error body has: `{"error": "...", "code": "..."}`. Database
//! failures are logged where they happen and leave as 503 `storage_unavailable`, which leaks
//! nothing.

use serde::Deserialize;
use serde_json::json;

use crate::db::QueryError;
use crate::http::{Refusal, Response};
use crate::ids::EventId;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_OVERLOADED_S: u32 = 1;
const RETRY_AFTER_STORAGE_S: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    MissingApiKey,
    InvalidApiKey,
    /// Two keys, or a key and a different bearer token: which one is meant is unknown.
    AmbiguousCredentials,
    InvalidJson(String),
    /// A field of an event is missing or wrong: the message names the field.
    InvalidEvent(String),
    InvalidTier(String),
    /// Self-serve signup asked for a tier above the operator's limit.
    TierNotAllowed(String),
    /// A query parameter is wrong: names the parameter.
    InvalidParameter(&'static str, String),
    /// No event with this id in the caller's organization (or a malformed id: the two are
    /// indistinguishable, as are other organizations' events).
    EventNotFound,
    InvalidWebhookUrl(String),
    WebhookUrlNotAllowed(String),
    /// Enabling or disabling a webhook the organization has not configured.
    WebhookNotConfigured,
    /// A body field of a non-event request is missing or wrong.
    InvalidRequest(String),
    DuplicateEvent(EventId),
    NotFound,
    MethodNotAllowed(&'static str),
    /// Over the organization's (or the client address's) rate: retry after this many seconds.
    RateLimited(u64),
    /// The route needs the operator's admin token.
    AdminTokenRequired,
    /// An operator's route asked from another host while the node has no admin token.
    OperatorOnly,
    /// The body is in a content coding (gzip, say) the server does not decode.
    UnsupportedContentEncoding,
    Overloaded,
    StorageUnavailable,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::MissingApiKey | ApiError::InvalidApiKey | ApiError::AdminTokenRequired => 401,
            ApiError::RateLimited(_) => 429,
            ApiError::InvalidJson(_)
            | ApiError::InvalidEvent(_)
            | ApiError::InvalidTier(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidParameter(..)
            | ApiError::InvalidWebhookUrl(_)
            | ApiError::WebhookUrlNotAllowed(_)
            | ApiError::AmbiguousCredentials => 400,
            ApiError::EventNotFound | ApiError::WebhookNotConfigured => 404,
            ApiError::TierNotAllowed(_) | ApiError::OperatorOnly => 403,
            ApiError::UnsupportedContentEncoding => 415,
            ApiError::DuplicateEvent(_) => 409,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Overloaded | ApiError::StorageUnavailable => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingApiKey => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::AmbiguousCredentials => "ambiguous_credentials",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidEvent(_) => "invalid_event",
            ApiError::InvalidTier(_) => "invalid_tier",
            ApiError::TierNotAllowed(_) => "tier_not_allowed",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidParameter(..) => "invalid_parameter",
            ApiError::EventNotFound => "event_not_found",
            ApiError::InvalidWebhookUrl(_) => "invalid_webhook_url",
            ApiError::WebhookUrlNotAllowed(_) => "webhook_url_not_allowed",
            ApiError::WebhookNotConfigured => "webhook_not_configured",
            ApiError::DuplicateEvent(_) => "duplicate_event",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::AdminTokenRequired => "admin_token_required",
            ApiError::OperatorOnly => "operator_only",
            ApiError::UnsupportedContentEncoding => "unsupported_content_encoding",
            ApiError::Overloaded => "overloaded",
            ApiError::StorageUnavailable => "storage_unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::MissingApiKey => "Missing API key: send it in the X-API-Key header".into(),
            ApiError::InvalidApiKey => "Invalid API key".into(),
            ApiError::AmbiguousCredentials => {
                "Send one credential: one X-API-Key or one Authorization: Bearer (both only with \
                 the same key)"
                    .into()
            }
            ApiError::InvalidJson(why) => format!("Request body is not valid JSON: {why}"),
            ApiError::InvalidEvent(why)
            | ApiError::InvalidRequest(why)
            | ApiError::InvalidTier(why)
            | ApiError::TierNotAllowed(why)
            | ApiError::InvalidWebhookUrl(why)
            | ApiError::WebhookUrlNotAllowed(why) => why.clone(),
            ApiError::InvalidParameter(name, why) => format!("Invalid `{name}`: {why}"),
            ApiError::EventNotFound => "Event not found".into(),
            ApiError::WebhookNotConfigured => {
                "No webhook is configured: POST /api/webhook/config first".into()
            }
            ApiError::DuplicateEvent(_) => {
                "An event with this dedup_id was already accepted".into()
            }
            ApiError::NotFound => "No such route".into(),
            ApiError::MethodNotAllowed(allow) => format!("Method not allowed; use {allow}"),
            ApiError::RateLimited(s) => format!("Rate limit exceeded; retry in {s} s"),
            ApiError::AdminTokenRequired => {
                "This route needs the admin token: Authorization: Bearer <token> (in a browser: \
                 any user name, the token as the password)"
                    .into()
            }
            ApiError::OperatorOnly => {
                "This route answers only clients on the server's own host, unless the server has \
                 an admin token (--admin-token) or --operator-remote true"
                    .into()
            }
            ApiError::UnsupportedContentEncoding => {
                "The body must not be compressed: send it without Content-Encoding (or identity)"
                    .into()
            }
            ApiError::Overloaded => "Server is at capacity; retry shortly".into(),
            ApiError::StorageUnavailable => {
                "Storage is unavailable; the event was not stored, retry later".into()
            }
        }
    }

    pub fn into_response(self) -> Response {
        let mut body = body(self.code(), self.message());
        match &self {
            ApiError::DuplicateEvent(id) => body["id"] = json!(id.to_string()),
            ApiError::InvalidParameter(name, _) => body["parameter"] = json!(name),
            _ => {}
        }
        let resp = Response::json_value(self.status(), &body);
        match self {
            ApiError::MethodNotAllowed(allow) => resp.header("allow", allow),
            ApiError::Overloaded => {
                resp.header("retry-after", RETRY_AFTER_OVERLOADED_S.to_string())
            }
            ApiError::StorageUnavailable => {
                resp.header("retry-after", RETRY_AFTER_STORAGE_S.to_string())
            }
            ApiError::RateLimited(s) => resp.header("retry-after", s.to_string()),
            // RFC 9110 §12.5.3: the codings the server takes.
            ApiError::UnsupportedContentEncoding => resp.header("accept-encoding", "identity"),
            // A browser asks for Basic credentials (the dashboard); other clients send the
            // token as a bearer token.
            ApiError::AdminTokenRequired => resp
                .header("www-authenticate", "Bearer realm=\"triggers\"")
                .header(
                    "www-authenticate",
                    "Basic realm=\"triggers admin\", charset=\"UTF-8\"",
                ),
            _ => resp,
        }
    }

    /// The answer to a request the HTTP layer refused, in the same shape.
    pub fn refusal_response(refusal: Refusal) -> Response {
        let resp = Response::json_value(refusal.status(), &body(refusal.code(), refusal.message()));
        match refusal {
            Refusal::Overloaded | Refusal::BodiesBusy => {
                resp.header("retry-after", RETRY_AFTER_OVERLOADED_S.to_string())
            }
            _ => resp,
        }
    }
}

fn body(code: &str, message: String) -> serde_json::Value {
    json!({"error": message, "code": code})
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Busy => ApiError::Overloaded,
            QueryError::Unavailable => ApiError::StorageUnavailable,
        }
    }
}

/// Parses a JSON body. Bytes that are not JSON are `invalid_json`; JSON of the wrong shape is
/// handed to `shape` to name the field.
pub fn parse_body<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    shape: impl FnOnce(String) -> ApiError,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => shape(e.to_string()),
        _ => ApiError::InvalidJson(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::FrameError;

    #[test]
    fn refusals_and_errors_share_one_body_shape() {
        for resp in [
            ApiError::refusal_response(Refusal::Frame(FrameError::HeadTooLarge)),
            ApiError::refusal_response(Refusal::Overloaded),
            ApiError::InvalidApiKey.into_response(),
        ] {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert!(v["error"].is_string() && v["code"].is_string(), "{v}");
        }
        for refusal in [Refusal::Overloaded, Refusal::BodiesBusy] {
            let overloaded = ApiError::refusal_response(refusal);
            assert_eq!(overloaded.status, 503);
            assert!(overloaded
                .headers
                .iter()
                .any(|(n, v)| *n == "retry-after" && v == "1"));
        }
    }
}

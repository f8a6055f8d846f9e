//! api::error: every way a request can fail, mapped 1:1 to an HTTP status and a stable `code`.
//! Database failures are logged where they happen and leave as 503 `storage_unavailable`,
//! which leaks nothing.

use serde_json::json;

use crate::http::request::FrameError;
use crate::http::response::Response;
use crate::ids::EventId;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_OVERLOADED_S: u32 = 1;
const RETRY_AFTER_STORAGE_S: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    MissingApiKey,
    InvalidApiKey,
    InvalidJson(String),
    /// A field of an event is missing or wrong: the message names the field.
    InvalidEvent(String),
    InvalidTier(String),
    /// A query parameter is wrong: names the parameter.
    InvalidParameter(&'static str, String),
    /// No event with this id in the caller's organization (or a malformed id: the two are
    /// indistinguishable, as are other organizations' events).
    EventNotFound,
    InvalidWebhookUrl(String),
    WebhookUrlNotAllowed(String),
    /// A body field of a non-event request is missing or wrong.
    InvalidRequest(String),
    DuplicateEvent(EventId),
    PayloadTooLarge(usize),
    NotFound,
    MethodNotAllowed(&'static str),
    /// Over the organization's (or the client address's) rate: retry after this many seconds.
    RateLimited(u64),
    /// The route needs the operator's admin token.
    AdminTokenRequired,
    Overloaded,
    StorageUnavailable,
    HeadersTooLarge,
    BadFraming(&'static str),
    UnsupportedCoding,
    RequestTimeout,
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
            | ApiError::BadFraming(_) => 400,
            ApiError::EventNotFound => 404,
            ApiError::DuplicateEvent(_) => 409,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Overloaded | ApiError::StorageUnavailable => 503,
            ApiError::HeadersTooLarge => 431,
            ApiError::UnsupportedCoding => 501,
            ApiError::RequestTimeout => 408,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingApiKey => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidEvent(_) => "invalid_event",
            ApiError::InvalidTier(_) => "invalid_tier",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidParameter(..) => "invalid_parameter",
            ApiError::EventNotFound => "event_not_found",
            ApiError::InvalidWebhookUrl(_) => "invalid_webhook_url",
            ApiError::WebhookUrlNotAllowed(_) => "webhook_url_not_allowed",
            ApiError::DuplicateEvent(_) => "duplicate_event",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::AdminTokenRequired => "admin_token_required",
            ApiError::Overloaded => "overloaded",
            ApiError::StorageUnavailable => "storage_unavailable",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::BadFraming(_) => "bad_request",
            ApiError::UnsupportedCoding => "unsupported_transfer_encoding",
            ApiError::RequestTimeout => "request_timeout",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::MissingApiKey => "Missing API key: send it in the X-API-Key header".into(),
            ApiError::InvalidApiKey => "Invalid API key".into(),
            ApiError::InvalidJson(why) => format!("Request body is not valid JSON: {why}"),
            ApiError::InvalidEvent(why)
            | ApiError::InvalidRequest(why)
            | ApiError::InvalidTier(why)
            | ApiError::InvalidWebhookUrl(why)
            | ApiError::WebhookUrlNotAllowed(why) => why.clone(),
            ApiError::InvalidParameter(name, why) => format!("Invalid `{name}`: {why}"),
            ApiError::EventNotFound => "Event not found".into(),
            ApiError::DuplicateEvent(_) => {
                "An event with this dedup_id was already accepted".into()
            }
            ApiError::PayloadTooLarge(max) => format!("Request body exceeds {max} bytes"),
            ApiError::NotFound => "No such route".into(),
            ApiError::MethodNotAllowed(allow) => format!("Method not allowed; use {allow}"),
            ApiError::RateLimited(s) => format!("Rate limit exceeded; retry in {s} s"),
            ApiError::AdminTokenRequired => {
                "This route needs the admin token: Authorization: Bearer <token>".into()
            }
            ApiError::Overloaded => "Server is at capacity; retry shortly".into(),
            ApiError::StorageUnavailable => {
                "Storage is unavailable; the event was not stored, retry later".into()
            }
            ApiError::HeadersTooLarge => "Request headers are too large".into(),
            ApiError::BadFraming(why) => format!("Malformed request: {why}"),
            ApiError::UnsupportedCoding => "Only the chunked transfer coding is supported".into(),
            ApiError::RequestTimeout => "The request was not received in time".into(),
        }
    }

    pub fn into_response(self) -> Response {
        let mut body = json!({"error": self.message(), "code": self.code()});
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
            // The stream's framing is lost or the client is too slow: answer and close.
            ApiError::HeadersTooLarge
            | ApiError::BadFraming(_)
            | ApiError::UnsupportedCoding
            | ApiError::RequestTimeout
            | ApiError::PayloadTooLarge(_) => resp.closing(),
            _ => resp,
        }
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> ApiError {
        match e {
            FrameError::HeadTooLarge => ApiError::HeadersTooLarge,
            FrameError::Malformed => ApiError::BadFraming("unparseable request line or header"),
            FrameError::AmbiguousLength => {
                ApiError::BadFraming("conflicting or repeated Content-Length/Transfer-Encoding")
            }
            FrameError::BadLength => ApiError::BadFraming("invalid Content-Length"),
            FrameError::UnsupportedCoding => ApiError::UnsupportedCoding,
            // The caller knows the limit and builds PayloadTooLarge itself.
            FrameError::BodyTooLarge => ApiError::PayloadTooLarge(0),
        }
    }
}

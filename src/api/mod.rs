//! api: the routes. `Route::resolve` maps method and path to a route (or 404 / 405 with
//! `Allow`), `dispatch` runs its handler, one file per resource. Handlers never block: database
//! work goes to the persisters (events) or the query threads (everything else).

mod ack;
pub mod error;
pub mod events;
mod health;
pub mod inbox;
mod keys;
mod stats;
pub mod webhook;

use std::rc::Rc;
use std::sync::Arc;

pub use error::ApiError;
use serde::Deserialize;

use crate::auth::{self, Org};
use crate::core::Core;
use crate::db::QueryError;
use crate::http::request::Method;
use crate::http::response::Response;
use crate::ids::OrgId;

/// The OpenAPI 3.1 description of every route, kept beside the API docs and held to `ROUTES`
/// by a test.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Largest `POST /api/events` body: the contract's 256 KiB.
pub const EVENT_BODY_BYTES_MAX: usize = 256 * 1024;
/// Largest `POST /api/events/batch` body: the contract's 5 MiB.
pub const BATCH_BODY_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Largest body of the other routes (key generation and the like), and of unknown routes.
pub const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

/// What a handler sees of a request; every field borrows the connection's buffer.
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: &'a str,
    pub api_key: Option<&'a [u8]>,
    pub bearer: Option<&'a [u8]>,
    pub peer: std::net::IpAddr,
    pub body: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    HealthLive,
    HealthReady,
    Events,
    EventsBatch,
    KeysGenerate,
    Keys,
    KeysRotate,
    Inbox,
    AckOne,
    AckMany,
    WebhookConfig,
    QueueStats,
    Metrics,
    OpenApi,
}

/// Methods a route answers, and the `Allow` header a wrong method gets.
#[derive(Clone, Copy, Debug)]
pub struct Methods {
    pub list: &'static [Method],
    pub allow: &'static str,
}

const READ: Methods = Methods {
    list: &[Method::Get, Method::Head],
    allow: "GET, HEAD",
};
const WRITE: Methods = Methods {
    list: &[Method::Post],
    allow: "POST",
};
const CONFIG: Methods = Methods {
    list: &[Method::Get, Method::Head, Method::Post, Method::Delete],
    allow: "GET, HEAD, POST, DELETE",
};

/// The route table: path (`{id}` stands for one path segment), route, methods. Routing, the
/// `Allow` header and the test that holds `docs/openapi.json` to the router all read it.
pub const ROUTES: &[(&str, Route, Methods)] = &[
    ("/health", Route::Health, READ),
    ("/health/live", Route::HealthLive, READ),
    ("/health/ready", Route::HealthReady, READ),
    ("/api/events", Route::Events, WRITE),
    ("/api/events/batch", Route::EventsBatch, WRITE),
    ("/api/keys/generate", Route::KeysGenerate, WRITE),
    ("/api/keys/rotate", Route::KeysRotate, WRITE),
    ("/api/keys", Route::Keys, READ),
    ("/api/inbox", Route::Inbox, READ),
    ("/api/ack", Route::AckMany, WRITE),
    ("/api/ack/{id}", Route::AckOne, WRITE),
    ("/api/webhook/config", Route::WebhookConfig, CONFIG),
    ("/api/queue/stats", Route::QueueStats, READ),
    ("/metrics", Route::Metrics, READ),
    ("/openapi.json", Route::OpenApi, READ),
];

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix("{id}") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => pattern == path,
    }
}

impl Route {
    pub fn resolve(method: Method, path: &str) -> Result<Route, ApiError> {
        let (_, route, methods) = ROUTES
            .iter()
            .find(|(pattern, ..)| path_matches(pattern, path))
            .ok_or(ApiError::NotFound)?;
        if methods.list.contains(&method) {
            Ok(*route)
        } else {
            Err(ApiError::MethodNotAllowed(methods.allow))
        }
    }

    pub fn body_bytes_max(self) -> usize {
        match self {
            Route::Events => EVENT_BODY_BYTES_MAX,
            Route::EventsBatch => BATCH_BODY_BYTES_MAX,
            _ => SMALL_BODY_BYTES_MAX,
        }
    }
}

pub async fn dispatch(core: &Rc<Core>, route: Route, req: &Request<'_>) -> Response {
    let result = match route {
        Route::Health => health::health(core).await,
        Route::HealthLive => Ok(health::live()),
        Route::HealthReady => health::ready(core).await,
        Route::Events => events::post(core, req).await,
        Route::EventsBatch => events::post_batch(core, req).await,
        Route::KeysGenerate => keys::generate(core, req).await,
        Route::Keys => keys::show(core, req).await,
        Route::KeysRotate => keys::rotate(core, req).await,
        Route::Inbox => inbox::list(core, req).await,
        Route::AckOne => ack::one(core, req).await,
        Route::AckMany => ack::many(core, req).await,
        Route::WebhookConfig => webhook::config(core, req).await,
        Route::QueueStats => stats::show(core, req),
        Route::Metrics => stats::metrics(core, req),
        Route::OpenApi => Ok(Response::text(
            200,
            "application/json",
            OPENAPI_JSON.as_bytes().to_vec(),
        )),
    };
    result.unwrap_or_else(ApiError::into_response)
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Busy => ApiError::Overloaded,
            QueryError::Unavailable => ApiError::StorageUnavailable,
        }
    }
}

/// The organization behind the request's key: from the shared cache, else from PostgreSQL on a
/// query thread. A malformed key is refused here without any I/O.
pub async fn authenticate(core: &Core, req: &Request<'_>) -> Result<Arc<Org>, ApiError> {
    let key = req
        .api_key
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::MissingApiKey)?;
    let hash = auth::check_format(key).ok_or(ApiError::InvalidApiKey)?;
    let keys = &core.shared.keys;
    loop {
        if let Some(org) = keys.get(&hash) {
            return Ok(org);
        }
        let generation = keys.generation();
        let found = core
            .shared
            .queries
            .run("key lookup", move |c| {
                let row = c.query_opt(
                    "SELECT o.org_id, o.name, o.tier, o.created_at, k.key_prefix
                     FROM api_keys k JOIN organizations o USING (org_id)
                     WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                    &[&hash.0.as_slice()],
                )?;
                Ok(row.map(|r| Org {
                    id: OrgId(r.get(0)),
                    name: r.get(1),
                    tier: r.get(2),
                    created_at: r.get(3),
                    key_prefix: r.get(4),
                    key_hash: hash,
                }))
            })
            .await?;
        let org = Arc::new(found.ok_or(ApiError::InvalidApiKey)?);
        // A rotation that landed while the query ran may have revoked this very key: look
        // again rather than let a revoked key through.
        if keys.insert_if_current(org.clone(), generation) {
            return Ok(org);
        }
    }
}

/// Admits the request if no admin token is configured or it carries the token as a bearer.
pub fn require_admin(core: &Core, req: &Request<'_>) -> Result<(), ApiError> {
    let Some(token) = &core.shared.config.admin_token else {
        return Ok(());
    };
    let given = req.bearer.unwrap_or_default();
    use subtle::ConstantTimeEq;
    if bool::from(given.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::AdminTokenRequired)
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

    #[test]
    fn routes_resolve_and_wrong_methods_name_the_allowed_ones() {
        assert_eq!(
            Route::resolve(Method::Post, "/api/events"),
            Ok(Route::Events)
        );
        assert_eq!(Route::resolve(Method::Head, "/health"), Ok(Route::Health));
        assert_eq!(
            Route::resolve(Method::Get, "/api/events"),
            Err(ApiError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            Route::resolve(Method::Get, "/nope"),
            Err(ApiError::NotFound)
        );
    }
}

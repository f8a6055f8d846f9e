//! api: the routes of the contract, behind the HTTP layer. `Route::resolve` maps method and
//! path to a route (or 404 / 405 with `Allow`); `Context`, one per core, is the `http::Handler`
//! that runs a route's handler, one file per resource. Handlers never block: database work goes
//! to the persisters (events) or the query threads (everything else). Imports `http`, `auth`,
//! `queue`, `hooks`, `db`, `egress`, `ratelimit`, `stats`, `jsonb_text` and `ids`.
//!
//! Inside: `mod.rs` routes and dispatches; the resource files use `context` (what a handler may
//! touch), `error` (every failure's status, code and body) and `cursor` (the cursors they hand
//! out), never this file.

mod ack;
mod attempts;
mod context;
mod cursor;
mod dashboard;
pub mod error;
pub mod events;
mod health;
pub mod inbox;
mod jsonb;
mod keys;
mod redeliver;
mod renders;
mod stats;
pub mod webhook;

use std::time::Duration;

pub use context::{AckMode, Context, Settings, Shared};
pub use error::ApiError;
pub use keys::{created, new_org};

use crate::auth::Presented;
use crate::db::orgs::Org;
use crate::http::{Handler, Method, Refusal, Request, Response};

/// The OpenAPI 3.1 description of every route, kept beside the API docs and held to `ROUTES`
/// by a test.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Largest `POST /api/events` body: the contract's 256 KiB.
pub const EVENT_BODY_BYTES_MAX: usize = 256 * 1024;
/// Largest `POST /api/events/batch` body: the contract's 5 MiB.
pub const BATCH_BODY_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Largest body of the other routes (key generation and the like), and of unknown routes.
pub const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

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
    WebhookEnable,
    WebhookDisable,
    WebhookRotateSecret,
    WebhookReplay,
    EventAttempts,
    EventRedeliver,
    QueueStats,
    Metrics,
    Dashboard,
    DashboardData,
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
    ("/api/webhook/enable", Route::WebhookEnable, WRITE),
    ("/api/webhook/disable", Route::WebhookDisable, WRITE),
    (
        "/api/webhook/rotate-secret",
        Route::WebhookRotateSecret,
        WRITE,
    ),
    ("/api/webhook/replay", Route::WebhookReplay, WRITE),
    ("/api/events/{id}/attempts", Route::EventAttempts, READ),
    ("/api/events/{id}/redeliver", Route::EventRedeliver, WRITE),
    ("/api/queue/stats", Route::QueueStats, READ),
    ("/metrics", Route::Metrics, READ),
    ("/dashboard", Route::Dashboard, READ),
    ("/dashboard/data", Route::DashboardData, READ),
    ("/openapi.json", Route::OpenApi, READ),
];

/// The segment `{id}` stands for in `path`, if `path` matches `pattern` (`Some("")` for a
/// pattern without `{id}`).
fn path_id<'a>(pattern: &str, path: &'a str) -> Option<&'a str> {
    match pattern.split_once("{id}") {
        Some((prefix, suffix)) => path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .filter(|id| !id.is_empty() && !id.contains('/')),
        None => (pattern == path).then_some(""),
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    path_id(pattern, path).is_some()
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

    /// What a request on this route must carry, checked from its head before its body is read.
    fn credential(self) -> Credential {
        match self {
            Route::Health | Route::HealthLive | Route::HealthReady | Route::OpenApi => {
                Credential::None
            }
            Route::KeysGenerate | Route::QueueStats => Credential::Admin,
            Route::Metrics | Route::Dashboard | Route::DashboardData => Credential::Operator,
            Route::Events
            | Route::EventsBatch
            | Route::Keys
            | Route::KeysRotate
            | Route::Inbox
            | Route::AckOne
            | Route::AckMany
            | Route::WebhookConfig
            | Route::WebhookEnable
            | Route::WebhookDisable
            | Route::WebhookRotateSecret
            | Route::WebhookReplay
            | Route::EventAttempts
            | Route::EventRedeliver => Credential::Key,
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

/// What a route's requests must carry.
enum Credential {
    None,
    /// An organization's API key.
    Key,
    /// The operator's admin token, when one is configured.
    Admin,
    /// The admin token when one is configured; without one, a client on this host (or any,
    /// with `operator_remote`): what the contract does not need open to everyone stays closed.
    Operator,
}

/// Every method some route answers: what `OPTIONS *` reports.
const ALLOW_ANY: &str = "GET, HEAD, POST, DELETE";

/// A request's place in the route table, or why it has none. Unknown paths and wrong methods
/// are answered like routes, after their body is read, so the connection stays usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    Route(Route),
    NotFound,
    MethodNotAllowed(&'static str),
    /// `OPTIONS *`: the server's own options (RFC 9110 §9.3.7).
    ServerOptions,
}

impl Handler for Context {
    type Route = Resolved;

    fn route(&self, method: Method, path: &str) -> Resolved {
        if method == Method::Options && path == "*" {
            return Resolved::ServerOptions;
        }
        match Route::resolve(method, path) {
            Ok(route) => Resolved::Route(route),
            Err(ApiError::MethodNotAllowed(allow)) => Resolved::MethodNotAllowed(allow),
            Err(_) => Resolved::NotFound,
        }
    }

    fn body_bytes_max(&self, resolved: Resolved) -> usize {
        match resolved {
            Resolved::Route(route) => route.body_bytes_max(),
            // Read and discarded under the small limit, so the connection stays usable.
            Resolved::NotFound | Resolved::MethodNotAllowed(_) | Resolved::ServerOptions => {
                SMALL_BODY_BYTES_MAX
            }
        }
    }

    /// The request's key, on routes that need one.
    type Admitted = Option<Presented>;

    fn admit(&self, resolved: Resolved, req: &Request<'_>) -> Result<Option<Presented>, Response> {
        if !identity_coded(req) {
            return Err(ApiError::UnsupportedContentEncoding.into_response());
        }
        let Resolved::Route(route) = resolved else {
            return Ok(None);
        };
        match route.credential() {
            Credential::None => Ok(None),
            Credential::Key => self.presented_key(req).map(Some),
            Credential::Admin => self.require_admin(req).map(|()| None),
            Credential::Operator => self.require_operator(req).map(|()| None),
        }
        .map_err(ApiError::into_response)
    }

    async fn handle(
        &self,
        resolved: Resolved,
        key: Option<Presented>,
        req: &Request<'_>,
    ) -> Response {
        let result = match resolved {
            Resolved::Route(route) => dispatch(self, route, key, req).await,
            Resolved::NotFound => Err(ApiError::NotFound),
            Resolved::MethodNotAllowed(allow) => Err(ApiError::MethodNotAllowed(allow)),
            Resolved::ServerOptions => {
                Ok(Response::json(204, Vec::new()).header("allow", ALLOW_ANY))
            }
        };
        result.unwrap_or_else(ApiError::into_response)
    }

    fn refused(&self, refusal: Refusal) -> Response {
        ApiError::refusal_response(refusal)
    }

    fn responded(&self, resolved: Resolved, took: Duration) {
        self.core_stats().requests.add(1);
        if resolved == Resolved::Route(Route::Events) {
            self.core_stats().ingest_us.record_duration(took);
        }
    }
}

/// Whether the request's body is as sent, in no content coding but `identity`: a compressed
/// body would otherwise be read as JSON and refused as malformed, or worse, taken for what it
/// is not. Refused 415 from the head, before the body is read.
fn identity_coded(req: &Request<'_>) -> bool {
    req.headers("content-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(b"identity"))
}

/// Runs `route`'s handler. A route that needs a key gets the organization behind the key
/// `admit` found, authenticated here, once, for every such route. An answer below 400 to a
/// tenant, or to the operator's verified admin token, serves them (see `http::pace`), unless
/// its handler decided otherwise (a batch that stored nothing).
async fn dispatch(
    ctx: &Context,
    route: Route,
    key: Option<Presented>,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    let to_verified = match route.credential() {
        Credential::Key => {
            let org = ctx.authenticate(key, req.peer).await?;
            dispatch_tenant(ctx, route, &org, req).await
        }
        Credential::Admin | Credential::Operator if ctx.settings.admin_token.is_some() => {
            dispatch_open(ctx, route, req).await
        }
        // Anyone it admitted may call it: it serves no one in particular.
        Credential::Admin | Credential::Operator | Credential::None => {
            return dispatch_open(ctx, route, req).await
        }
    };
    let answer = to_verified.unwrap_or_else(ApiError::into_response);
    let serves = answer.status < 400;
    Ok(answer.serving(serves))
}

/// Runs the handler of a route that needs no key.
async fn dispatch_open(
    ctx: &Context,
    route: Route,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    match route {
        Route::Health => health::health(ctx).await,
        Route::HealthLive => Ok(health::live(ctx)),
        Route::HealthReady => health::ready(ctx).await,
        Route::KeysGenerate => keys::generate(ctx, req).await,
        Route::QueueStats => ctx
            .renders
            .answer("/api/queue/stats", req.query, || stats::show(ctx, req))
            .and_then(|r| ctx.held(r)),
        Route::Metrics => ctx
            .renders
            .answer("/metrics", req.query, || stats::metrics(ctx))
            .and_then(|r| ctx.held(r)),
        Route::Dashboard => dashboard::page(ctx),
        Route::DashboardData => ctx
            .renders
            .answer("/dashboard/data", req.query, || dashboard::data(ctx, req))
            .and_then(|r| ctx.held(r)),
        Route::OpenApi => ctx.held(Response::text(
            200,
            "application/json",
            OPENAPI_JSON.as_bytes().to_vec(),
        )),
        tenant => unreachable!("{tenant:?} needs a key: dispatched above"),
    }
}

/// Runs the handler of a route that needs a key, for `org`.
async fn dispatch_tenant(
    ctx: &Context,
    route: Route,
    org: &Org,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    match route {
        Route::Events => events::post(ctx, org, req).await,
        Route::EventsBatch => events::post_batch(ctx, org, req).await,
        Route::Keys => keys::show(ctx, org).await,
        Route::KeysRotate => keys::rotate(ctx, org).await,
        Route::Inbox => inbox::list(ctx, org, req).await,
        Route::AckOne => ack::one(ctx, org, req).await,
        Route::AckMany => ack::many(ctx, org, req).await,
        Route::WebhookConfig => webhook::config(ctx, org, req).await,
        Route::WebhookEnable => webhook::enable(ctx, org, true).await,
        Route::WebhookDisable => webhook::enable(ctx, org, false).await,
        Route::WebhookRotateSecret => webhook::rotate_secret(ctx, org, req).await,
        Route::WebhookReplay => redeliver::replay(ctx, org, req).await,
        Route::EventAttempts => attempts::list(ctx, org, req).await,
        Route::EventRedeliver => redeliver::one(ctx, org, req).await,
        open => unreachable!("{open:?} needs no key: dispatched by `dispatch`"),
    }
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
        assert_eq!(
            Route::resolve(Method::Post, "/api/ack/x/y"),
            Err(ApiError::NotFound)
        );
    }
}

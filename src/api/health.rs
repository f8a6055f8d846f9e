//! api::health: liveness, readiness and a database check. No auth, no rate limit.

use serde_json::json;

use super::context::Context;
use super::error::ApiError;
use crate::db::Work;
use crate::http::Response;

async fn database_ok(ctx: &Context) -> bool {
    ctx.queries
        .run(Work::Node, "health check", |c| {
            c.simple_query("SELECT 1").map(drop)
        })
        .await
        .is_ok()
}

pub async fn health(ctx: &Context) -> Result<Response, ApiError> {
    let ok = database_ok(ctx).await;
    let (status, state, db) = if ok {
        (200, "ok", "ok")
    } else {
        (503, "degraded", "unreachable")
    };
    Ok(Response::json_value(
        status,
        &json!({
            "status": state,
            "database": db,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": ctx.stats.started.elapsed().as_secs(),
        }),
    ))
}

/// Live unless the node cannot recover on its own: its embedded PostgreSQL died and would not
/// restart (an outage it can ride out, such as a database URL that is down, is not a reason
/// to replace the node).
pub fn live(ctx: &Context) -> Response {
    if ctx.stats.storage_lost.get() {
        return Response::json_value(
            503,
            &json!({
                "status": "failing",
                "reason": "the embedded PostgreSQL died and does not restart; see the server log",
            }),
        );
    }
    Response::json_value(200, &json!({"status": "ok"}))
}

/// Ready when persister threads run and PostgreSQL answers.
pub async fn ready(ctx: &Context) -> Result<Response, ApiError> {
    let persisting = ctx.stats.persisters_running.get() > 0;
    if persisting && database_ok(ctx).await {
        Ok(Response::json_value(200, &json!({"status": "ready"})))
    } else {
        Ok(Response::json_value(503, &json!({"status": "not_ready"})))
    }
}

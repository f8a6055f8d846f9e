//! api::health: liveness, readiness and a database check. No auth, no rate limit.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::ApiError;
use crate::core::Core;
use crate::http::response::Response;

async fn database_ok(core: &Core) -> bool {
    core.shared
        .queries
        .run("health check", |c| c.simple_query("SELECT 1").map(drop))
        .await
        .is_ok()
}

pub async fn health(core: &Rc<Core>) -> Result<Response, ApiError> {
    let ok = database_ok(core).await;
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
            "uptime_s": core.shared.started.elapsed().as_secs(),
        }),
    ))
}

pub fn live() -> Response {
    Response::json_value(200, &json!({"status": "ok"}))
}

/// Ready when persister threads run and PostgreSQL answers.
pub async fn ready(core: &Rc<Core>) -> Result<Response, ApiError> {
    let persisting = core.shared.persist.running.load(Ordering::Relaxed) > 0;
    if persisting && database_ok(core).await {
        Ok(Response::json_value(200, &json!({"status": "ready"})))
    } else {
        Ok(Response::json_value(503, &json!({"status": "not_ready"})))
    }
}

//! api::attempts: `GET /api/events/{id}/attempts`: every webhook delivery attempt made for one
//! of the organization's events, oldest first. Another organization's event, a malformed id
//! and an unknown one are the same 404 / `not_found`.

use serde_json::{json, Value};

use super::context::{path_event_id, Context};
use super::error::ApiError;
use crate::db::deliveries;
use crate::db::orgs::Org;
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::rfc3339;

pub async fn list(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let id = path_event_id(req.path, "/api/events/", "/attempts")?;
    let org_id = org.id;
    let attempts = ctx
        .queries
        .run(Work::Org(org_id), "delivery attempts", move |c| {
            deliveries::attempts(c, org_id, id)
        })
        .await?
        .ok_or(ApiError::EventNotFound)?;
    let shown: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt,
                "attempted_at": rfc3339(a.attempted_at).to_string(),
                "status_code": a.status_code,
                "error": a.error,
                "latency_ms": f64::from(a.latency_us) / 1000.0,
                "response": a.response,
            })
        })
        .collect();
    Ok(Response::json_value(
        200,
        &json!({"event_id": id.to_string(), "attempts": shown}),
    ))
}

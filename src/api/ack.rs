//! api::ack: marking events delivered. `POST /api/ack/{id}` is idempotent (a second ack answers
//! the same body, with the first ack's time); `POST /api/ack` takes up to 1000 ids. Unknown,
//! malformed and other organizations' ids are the same 404 / `not_found`: nothing tells them
//! apart.

use std::rc::Rc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{authenticate, parse_body, ApiError, Request};
use crate::core::Core;
use crate::http::response::Response;
use crate::ids::rfc3339;

const IDS_MAX: usize = 1000;

/// Marks the caller's events delivered (once: later acks keep the first time) and returns the
/// ids found with their delivery time. One statement: rows already delivered are read, not
/// rewritten.
fn acknowledge(
    client: &mut postgres::Client,
    org: Uuid,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, SystemTime)>, postgres::Error> {
    let rows = client.query(
        "WITH marked AS (
             UPDATE events SET status = 'delivered', delivered_at = now()
             WHERE org_id = $1 AND id = ANY($2) AND status <> 'delivered'
             RETURNING id, delivered_at
         )
         SELECT id, delivered_at FROM marked
         UNION ALL
         SELECT id, delivered_at FROM events
         WHERE org_id = $1 AND id = ANY($2) AND status = 'delivered'",
        &[&org, &ids],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn one(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = authenticate(core, req).await?;
    let id = req
        .path
        .strip_prefix("/api/ack/")
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(ApiError::EventNotFound)?;
    let org_id = org.id.0;
    let found = core
        .shared
        .queries
        .run("ack", move |c| acknowledge(c, org_id, &[id]))
        .await?;
    let (_, at) = found.first().ok_or(ApiError::EventNotFound)?;
    Ok(Response::json_value(
        200,
        &json!({
            "id": id.hyphenated().to_string(),
            "status": "delivered",
            "delivered_at": rfc3339(*at).to_string(),
        }),
    ))
}

#[derive(Deserialize)]
struct AckIn {
    event_ids: Option<Vec<serde_json::Value>>,
}

pub async fn many(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = authenticate(core, req).await?;
    let input: AckIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!("expected {{\"event_ids\": [id, ...]}}: {why}"))
    })?;
    let requested = input
        .event_ids
        .filter(|ids| (1..=IDS_MAX).contains(&ids.len()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("`event_ids` must hold 1 to {IDS_MAX} ids"))
        })?;
    // Anything that is not a UUID string cannot name an event: it is simply not found.
    let ids: Vec<Uuid> = requested
        .iter()
        .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .collect();
    let org_id = org.id.0;
    let found = core
        .shared
        .queries
        .run("ack batch", move |c| acknowledge(c, org_id, &ids))
        .await?;
    let found: std::collections::HashSet<Uuid> = found.into_iter().map(|(id, _)| id).collect();
    let mut acknowledged = 0;
    let mut not_found = Vec::new();
    for v in requested {
        match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) if found.contains(&id) => acknowledged += 1,
            _ => not_found.push(v),
        }
    }
    Ok(Response::json_value(
        200,
        &json!({"acknowledged": acknowledged, "not_found": not_found}),
    ))
}

//! api::ack: marking events delivered. `POST /api/ack/{id}` is idempotent (a second ack answers
//! the same body, with the first ack's time); `POST /api/ack` takes up to 1000 ids. Unknown,
//! malformed and other organizations' ids are the same 404 / `not_found`: nothing tells them
//! apart.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::context::Context;
use super::error::{parse_body, ApiError};
use crate::db::events;
use crate::http::{Request, Response};
use crate::ids::{rfc3339, EventId};

const IDS_MAX: usize = 1000;

/// An event id as a client wrote it; anything that is not a UUID cannot name an event.
fn event_id(text: &str) -> Option<EventId> {
    Uuid::parse_str(text).ok().map(EventId)
}

pub async fn one(ctx: &Context, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = ctx.authenticate(req).await?;
    let id = req
        .path
        .strip_prefix("/api/ack/")
        .and_then(event_id)
        .ok_or(ApiError::EventNotFound)?;
    let org_id = org.id;
    let found = ctx
        .queries
        .run("ack", move |c| events::acknowledge(c, org_id, &[id]))
        .await?;
    let (_, at) = found.first().ok_or(ApiError::EventNotFound)?;
    Ok(Response::json_value(
        200,
        &json!({
            "id": id.to_string(),
            "status": "delivered",
            "delivered_at": rfc3339(*at).to_string(),
        }),
    ))
}

#[derive(Deserialize)]
struct AckIn {
    event_ids: Option<Vec<serde_json::Value>>,
}

pub async fn many(ctx: &Context, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = ctx.authenticate(req).await?;
    let input: AckIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!("expected {{\"event_ids\": [id, ...]}}: {why}"))
    })?;
    let requested = input
        .event_ids
        .filter(|ids| (1..=IDS_MAX).contains(&ids.len()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("`event_ids` must hold 1 to {IDS_MAX} ids"))
        })?;
    let parse = |v: &serde_json::Value| v.as_str().and_then(event_id);
    let ids: Vec<EventId> = requested.iter().filter_map(parse).collect();
    let org_id = org.id;
    let found = ctx
        .queries
        .run("ack batch", move |c| events::acknowledge(c, org_id, &ids))
        .await?;
    let found: HashSet<EventId> = found.into_iter().map(|(id, _)| id).collect();
    let mut acknowledged = 0;
    let mut not_found = Vec::new();
    for v in requested {
        match parse(&v) {
            Some(id) if found.contains(&id) => acknowledged += 1,
            _ => not_found.push(v),
        }
    }
    Ok(Response::json_value(
        200,
        &json!({"acknowledged": acknowledged, "not_found": not_found}),
    ))
}

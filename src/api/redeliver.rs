//! api::redeliver: pushing events again. `POST /api/events/{id}/redeliver` queues one event
//! (a `failed` one too: it is `pending` again); `POST /api/webhook/replay` queues the events
//! created in a time range, optionally of one status, up to `REPLAY_MAX` per call. Each queued
//! event starts a new round of attempts at once, with the same `webhook-id`.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::json;

use super::context::{path_event_id, status_filter, Context};
use super::error::{parse_body, ApiError};
use crate::db::deliveries;
use crate::db::events::Status;
use crate::db::orgs::{self, Org};
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{rfc3339, OrgId};

/// Events one replay call queues at most; `next_since` says where to go on.
const REPLAY_MAX: i64 = 10_000;

/// Fails unless `org` has a webhook (enabled or not): deliveries need somewhere to go.
fn configured(c: &mut postgres::Client, org: OrgId) -> Result<bool, postgres::Error> {
    Ok(orgs::webhook(c, org)?.url.is_some())
}

pub async fn one(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let id = path_event_id(req.path, "/api/events/", "/redeliver")?;
    let org_id = org.id;
    let found = ctx
        .queries
        .run(Work::Org(org_id), "redeliver", move |c| {
            if !configured(c, org_id)? {
                return Ok(None);
            }
            deliveries::redeliver(c, org_id, id).map(Some)
        })
        .await?
        .ok_or(ApiError::WebhookNotConfigured)?;
    if !found {
        return Err(ApiError::EventNotFound);
    }
    Ok(Response::json_value(
        202,
        &json!({"event_id": id.to_string(), "queued": 1}),
    ))
}

#[derive(Deserialize)]
struct ReplayIn {
    since: String,
    until: Option<String>,
    status: Option<String>,
}

fn time(field: &str, text: &str) -> Result<SystemTime, ApiError> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| ApiError::InvalidRequest(format!("`{field}` is not an RFC 3339 time: {e}")))
}

pub async fn replay(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let input: ReplayIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!(
            "expected {{\"since\": time, \"until\"?: time, \"status\"?: str}}: {why}"
        ))
    })?;
    let since = time("since", &input.since)?;
    let until = match &input.until {
        Some(u) => time("until", u)?,
        None => SystemTime::now(),
    };
    if until <= since {
        return Err(ApiError::InvalidRequest(
            "`until` must be later than `since`".into(),
        ));
    }
    let status = match input.status.as_deref() {
        None => None,
        Some(s) => status_filter(s).ok_or_else(|| {
            ApiError::InvalidRequest("`status` must be pending, delivered, failed or all".into())
        })?,
    };
    let org_id = org.id;
    let (queued, next) = ctx
        .queries
        .run(Work::Org(org_id), "replay", move |c| {
            if !configured(c, org_id)? {
                return Ok(None);
            }
            let status = status.map(Status::as_str);
            deliveries::replay(c, org_id, since, until, status, REPLAY_MAX).map(Some)
        })
        .await?
        .ok_or(ApiError::WebhookNotConfigured)?;
    Ok(Response::json_value(
        202,
        &json!({
            "queued": queued,
            "has_more": next.is_some(),
            "next_since": next.map(|t| rfc3339(t).to_string()),
        }),
    ))
}

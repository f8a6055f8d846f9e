//! api::redeliver: pushing events again. `POST /api/events/{id}/redeliver` queues one event
//! (a `failed` one too: it is `pending` again); `POST /api/webhook/replay` queues the events
//! created in a time range, optionally of one status, up to `REPLAY_MAX` per call. Each queued
//! event starts a new round of attempts at once, with the same `webhook-id`.
//!
//! Both are metered: an organization queues events again at most at its tier's rate of
//! ingest (a bucket of its own, on each node), so a tenant cannot turn one call into an
//! unbounded stream of attempts. Past it: 429 with `Retry-After`; a replay queues what the
//! bucket holds and says where to go on.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::json;

use super::context::{path_event_id, status_filter, Context};
use super::cursor;
use super::error::{parse_body, ApiError};
use crate::db::deliveries::{self, ReplayCursor};
use crate::db::events::Status;
use crate::db::orgs::{self, Org};
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{rfc3339, OrgId};

/// What `org` may queue again now, up to `want`: the events taken from its bucket (all of
/// `want` on an unlimited tier), and the bucket's rate, to give back what is not used.
fn allowance(ctx: &Context, org: &Org, want: u64) -> Result<(u64, Option<u64>), ApiError> {
    let per_minute = ctx.settings.tiers.get(&org.tier).and_then(|t| t.per_minute);
    let Some(per_minute) = per_minute else {
        return Ok((want, None));
    };
    let (taken, _) = ctx
        .limits
        .redeliveries
        .take_up_to(org.id, per_minute, want, std::time::Instant::now())
        .map_err(|l| ApiError::RateLimited(l.retry_after_s))?;
    Ok((taken, Some(per_minute)))
}

/// Gives back to `org`'s bucket what an allowance of `taken` did not queue.
fn unused(ctx: &Context, org: &Org, taken: u64, queued: u64, per_minute: Option<u64>) {
    if let Some(per_minute) = per_minute {
        let left = taken.saturating_sub(queued);
        ctx.limits.redeliveries.give_back(org.id, per_minute, left);
    }
}

/// Events one replay call queues at most; `next_since` says where to go on.
const REPLAY_MAX: u64 = 10_000;

/// Fails unless `org` has a webhook (enabled or not): deliveries need somewhere to go.
fn configured(c: &mut postgres::Client, org: OrgId) -> Result<bool, postgres::Error> {
    Ok(orgs::webhook(c, org)?.url.is_some())
}

pub async fn one(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let id = path_event_id(req.path, "/api/events/", "/redeliver")?;
    let org_id = org.id;
    let (taken, per_minute) = allowance(ctx, org, 1)?;
    let found = ctx
        .queries
        .run(Work::Org(org_id), "redeliver", move |c| {
            if !configured(c, org_id)? {
                return Ok(None);
            }
            deliveries::redeliver(c, org_id, id).map(Some)
        })
        .await;
    let queued = matches!(found, Ok(Some(Some(true))));
    unused(ctx, org, taken, u64::from(queued), per_minute);
    found?
        .ok_or(ApiError::WebhookNotConfigured)?
        .ok_or(ApiError::EventNotFound)?;
    // Not queued: an attempt is in flight, and it is left to finish.
    Ok(Response::json_value(
        202,
        &json!({"event_id": id.to_string(), "queued": u64::from(queued)}),
    ))
}

#[derive(Deserialize)]
struct ReplayIn {
    since: String,
    until: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    /// Events this call queues at most (`REPLAY_MAX` when absent).
    limit: Option<u64>,
}

fn time(field: &str, text: &str) -> Result<SystemTime, ApiError> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| ApiError::InvalidRequest(format!("`{field}` is not an RFC 3339 time: {e}")))
}

/// A replay's `next_cursor`: the last event queued (its creation time, its id).
fn encode_cursor(c: ReplayCursor) -> String {
    cursor::encode(&[&cursor::time_field(c.created_at), c.id.0.as_bytes()])
}

fn decode_cursor(text: &str) -> Option<ReplayCursor> {
    let f: [u8; 24] = cursor::decode(text)?;
    let (time, id) = f.split_at(8);
    Some(ReplayCursor {
        created_at: cursor::field_time(time.try_into().ok()?),
        id: cursor::field_id(id.try_into().ok()?),
    })
}

pub async fn replay(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let input: ReplayIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!(
            "expected {{\"since\": time, \"until\"?: time, \"status\"?: str, \"cursor\"?: str, \
             \"limit\"?: int}}: {why}"
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
    let after = match input.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::InvalidRequest("`cursor` is not a cursor this server issued".into())
        })?),
    };
    let want = match input.limit {
        None => REPLAY_MAX,
        Some(n) if (1..=REPLAY_MAX).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "`limit` must be from 1 to 10000".into(),
            ))
        }
    };
    let org_id = org.id;
    let (max, per_minute) = allowance(ctx, org, want)?;
    let replayed = ctx
        .queries
        .run(Work::Org(org_id), "replay", move |c| {
            if !configured(c, org_id)? {
                return Ok(None);
            }
            let status = status.map(Status::as_str);
            deliveries::replay(c, org_id, since, until, status, after, max as i64).map(Some)
        })
        .await;
    let queued = match &replayed {
        Ok(Some(r)) => r.queued,
        _ => 0,
    };
    unused(ctx, org, max, queued, per_minute);
    let r = replayed?.ok_or(ApiError::WebhookNotConfigured)?;
    Ok(Response::json_value(
        202,
        &json!({
            "queued": r.queued,
            "in_flight": r.in_flight,
            "has_more": r.next.is_some(),
            "next_cursor": r.next.map(encode_cursor),
            "next_since": r.next.map(|c| rfc3339(c.created_at).to_string()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;
    use crate::ids::EventId;

    #[test]
    fn replay_cursors_round_trip_and_nothing_else_decodes() {
        let c = ReplayCursor {
            created_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456),
            id: EventId::new_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        for bad in ["", "AQ", "zz!", &URL_SAFE_NO_PAD.encode([2u8; 25])] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}

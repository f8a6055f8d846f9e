//! api::attempts: `GET /api/events/{id}/attempts`: the webhook delivery attempts made for one
//! of the organization's events, oldest first, a page at a time (`limit`, `cursor`): an event
//! redelivered again and again has as many attempts as its tier's metering allowed, and no
//! answer holds them all. Another organization's event, a malformed id and an unknown one are
//! the same 404 `event_not_found`.

use serde_json::{json, Value};

use super::context::{path_event_id, Context};
use super::cursor;
use super::error::ApiError;
use crate::db::deliveries::{self, AttemptCursor};
use crate::db::orgs::Org;
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::rfc3339;

/// Attempts a page holds by default, and at most. An attempt keeps at most 1 KiB of answer and
/// 1 KiB of error, so a page is at most ~2.5 MB.
const LIMIT_DEFAULT: i64 = 100;
const LIMIT_MAX: i64 = 1000;
fn encode_cursor(c: AttemptCursor) -> String {
    cursor::encode(&[
        &cursor::time_field(c.attempted_at),
        &c.attempt.to_be_bytes(),
    ])
}

fn decode_cursor(text: &str) -> Option<AttemptCursor> {
    let f: [u8; 10] = cursor::decode(text)?;
    let (time, attempt) = f.split_at(8);
    Some(AttemptCursor {
        attempted_at: cursor::field_time(time.try_into().ok()?),
        attempt: i16::from_be_bytes(attempt.try_into().ok()?),
    })
}

/// `limit` and `cursor` of the query string.
fn parse_query(query: &str) -> Result<(i64, Option<AttemptCursor>), ApiError> {
    let bad = |name: &'static str, why: &str| ApiError::InvalidParameter(name, why.to_string());
    let (mut limit, mut after) = (LIMIT_DEFAULT, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?;
            }
            "cursor" => {
                after = Some(
                    decode_cursor(&value)
                        .ok_or_else(|| bad("cursor", "not a cursor this server issued"))?,
                );
            }
            _ => {}
        }
    }
    Ok((limit, after))
}

pub async fn list(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let id = path_event_id(req.path, "/api/events/", "/attempts")?;
    let (limit, after) = parse_query(req.query)?;
    let org_id = org.id;
    let (attempts, more) = ctx
        .queries
        .run(Work::Org(org_id), "delivery attempts", move |c| {
            deliveries::attempts(c, org_id, id, after, limit)
        })
        .await?
        .ok_or(ApiError::EventNotFound)?;
    let next_cursor = attempts.last().filter(|_| more).map(|a| {
        encode_cursor(AttemptCursor {
            attempted_at: a.attempted_at,
            attempt: a.attempt,
        })
    });
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
    ctx.held(Response::json_value(
        200,
        &json!({
            "event_id": id.to_string(),
            "attempts": shown,
            "has_more": more,
            "next_cursor": next_cursor,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_parameters_are_named() {
        let c = AttemptCursor {
            attempted_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_654_321),
            attempt: 7,
        };
        let text = encode_cursor(c);
        assert_eq!(decode_cursor(&text), Some(c));
        assert_eq!(
            parse_query(&format!("limit=5&cursor={text}")).unwrap(),
            (5, Some(c))
        );
        assert_eq!(parse_query("").unwrap(), (LIMIT_DEFAULT, None));
        for (q, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("cursor=AQ", "cursor"),
        ] {
            match parse_query(q) {
                Err(ApiError::InvalidParameter(n, _)) => assert_eq!(n, name, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }
}

//! api::inbox: `GET /api/inbox`, the caller's events page by page.
//!
//! Pages are keyset scans in id order (UUIDv7: time order) from an opaque cursor, so walking
//! `next_cursor` to the end yields every event that was committed when the walk passed its
//! place exactly once, however many arrive meanwhile. `offset` is accepted for older clients
//! and ignored when a cursor is given. The page is read on a query thread (`db::events::page`),
//! scoped by the caller's organization.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use super::context::{status_filter, Context};
use super::cursor;
use super::error::ApiError;
use crate::db::events::{self, PageQuery, Status, StoredEvent};
use crate::db::orgs::Org;
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{rfc3339, EventId};

const LIMIT_DEFAULT: u32 = 100;
const LIMIT_MAX: u32 = 1000;
/// Deep offsets scan and discard every skipped row; past this, clients must use the cursor.
const OFFSET_MAX: u64 = 100_000;
/// Payload bytes past which a page ends early, with `has_more` and a cursor: `limit` bounds
/// rows, and 1,000 events of 256 KiB would be a 256 MB answer. The event that crosses the
/// line is the page's last.
const PAGE_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// What an event adds to a page besides its payload (id, type, times, JSON punctuation), at
/// most: a type of 255 characters is 1,530 bytes escaped, which no real type is.
const EVENT_OUT_BYTES: usize = 512;
/// A page's `next_cursor`: its last event's id.
fn encode_cursor(id: EventId) -> String {
    cursor::encode(&[id.0.as_bytes()])
}

fn decode_cursor(text: &str) -> Option<EventId> {
    cursor::decode(text).map(cursor::field_id)
}

/// Parses the query string; pure, so every rule is unit-tested.
pub fn parse_query(query: &str) -> Result<PageQuery, ApiError> {
    let bad = |name: &'static str, why: &str| ApiError::InvalidParameter(name, why.to_string());
    let mut q = PageQuery {
        status: Some(Status::Pending),
        kind: None,
        limit: LIMIT_DEFAULT,
        descending: true,
        after: None,
        offset: 0,
        kept_since: None,
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "status" => {
                q.status = status_filter(&value)
                    .ok_or_else(|| bad("status", "use pending, delivered, failed or all"))?;
            }
            "type" => {
                if value.is_empty() || value.chars().count() > 255 {
                    return Err(bad("type", "must be 1..255 characters"));
                }
                // PostgreSQL's text cannot hold NUL; asked, it fails the query.
                if value.contains('\0') {
                    return Err(bad("type", "must not contain NUL"));
                }
                q.kind = Some(value.into_owned());
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?;
            }
            "order" => {
                q.descending = match &*value {
                    "desc" => true,
                    "asc" => false,
                    _ => return Err(bad("order", "use desc or asc")),
                }
            }
            "cursor" => {
                q.after = Some(
                    decode_cursor(&value)
                        .ok_or_else(|| bad("cursor", "not a cursor this server issued"))?,
                );
            }
            "offset" => {
                q.offset = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= OFFSET_MAX)
                    .ok_or_else(|| {
                        bad(
                            "offset",
                            "must be an integer from 0 to 100000; use the cursor to go further",
                        )
                    })?;
            }
            // Unknown parameters are ignored, as the earlier implementations did.
            _ => {}
        }
    }
    Ok(q)
}

#[derive(Serialize)]
pub struct EventOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Box<RawValue>,
    pub dedup_id: Option<String>,
    pub status: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

impl From<StoredEvent> for EventOut {
    fn from(e: StoredEvent) -> EventOut {
        EventOut {
            id: e.id.to_string(),
            kind: e.kind,
            payload: RawValue::from_string(e.payload).expect("PostgreSQL returns valid JSON"),
            dedup_id: e.dedup_id,
            status: e.status,
            created_at: rfc3339(e.created_at).to_string(),
            delivered_at: e.delivered_at.map(|t| rfc3339(t).to_string()),
        }
    }
}

#[derive(Serialize)]
struct Page {
    events: Vec<EventOut>,
    next_cursor: Option<String>,
    has_more: bool,
    limit: u32,
}

pub async fn list(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let mut q = parse_query(req.query)?;
    q.kept_since = ctx.retention(org).kept_since(SystemTime::now());
    let limit = q.limit;
    let org_id = org.id;
    // The page holds the node's body budget for what it reads, twice over (the rows, then
    // their serialization), until its answer has been written. A budget spent elsewhere ends
    // the page early, as its own byte bound does.
    let budget = ctx.guards.budget.clone();
    let mut lease = None;
    let (stored, has_more, mut lease) = ctx
        .queries
        .run(Work::Org(org_id), "inbox", move |c| {
            let mut held = 0;
            let (stored, has_more) = events::page(c, org_id, &q, |payload| {
                let more = held + payload + EVENT_OUT_BYTES;
                let fits = held < PAGE_PAYLOAD_BYTES_MAX && budget.cover(&mut lease, 2 * more);
                held = if fits { more } else { held };
                fits
            })?;
            Ok((stored, has_more, lease))
        })
        .await?;
    if stored.is_empty() && has_more {
        // Not one event fit: the budget is spent.
        return Err(ApiError::Overloaded);
    }
    let next_cursor = match stored.last() {
        Some(last) if has_more => Some(encode_cursor(last.id)),
        _ => None,
    };
    let page = Page {
        events: stored.into_iter().map(EventOut::from).collect(),
        next_cursor,
        has_more,
        limit,
    };
    let body = serde_json::to_vec(&page).expect("a page serializes");
    drop(page);
    // Down to what the answer holds now. Only a page of unusually long types could need more
    // than was leased; it then keeps the larger count it has.
    if let Some(lease) = &mut lease {
        let _ = lease.resize(body.len());
    }
    Ok(Response {
        lease,
        ..Response::json(200, body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pending_newest_first_100() {
        let q = parse_query("").unwrap();
        assert_eq!(q.status, Some(Status::Pending));
        assert!(q.descending);
        assert_eq!((q.limit, q.offset, q.after, q.kind), (100, 0, None, None));
    }

    #[test]
    fn every_parameter_parses_and_bad_values_name_the_parameter() {
        let id = EventId::new_v7();
        let q = parse_query(&format!(
            "status=all&type=order.created&limit=5&order=asc&cursor={}&offset=3&unknown=1",
            encode_cursor(id)
        ))
        .unwrap();
        assert_eq!(q.status, None);
        assert_eq!(q.kind.as_deref(), Some("order.created"));
        assert_eq!(
            (q.limit, q.descending, q.after, q.offset),
            (5, false, Some(id), 3)
        );
        for (query, param) in [
            ("status=done", "status"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("order=up", "order"),
            ("cursor=zzz", "cursor"),
            ("cursor=", "cursor"),
            ("offset=-1", "offset"),
            ("offset=100001", "offset"),
            ("type=", "type"),
            ("type=a%00", "type"),
        ] {
            match parse_query(query) {
                Err(ApiError::InvalidParameter(p, _)) => assert_eq!(p, param, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    mod fuzz {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use proptest::prelude::*;
        use uuid::Uuid;

        use super::*;

        proptest! {
            #[test]
            fn any_query_string_parses_or_names_a_parameter(query in "\\PC{0,120}") {
                match parse_query(&query) {
                    Ok(q) => prop_assert!((1..=LIMIT_MAX).contains(&q.limit) && q.offset <= OFFSET_MAX),
                    Err(ApiError::InvalidParameter(..)) => {}
                    Err(other) => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn cursors_round_trip_and_nothing_else_decodes(id in any::<u128>(), raw in prop::collection::vec(any::<u8>(), 0..24)) {
                let id = EventId(Uuid::from_u128(id));
                prop_assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
                let text = URL_SAFE_NO_PAD.encode(&raw);
                // Format 1, then the 16 bytes of an id.
                let valid = raw.len() == 17 && raw[0] == 1;
                prop_assert_eq!(decode_cursor(&text).is_some(), valid);
            }
        }
    }
}

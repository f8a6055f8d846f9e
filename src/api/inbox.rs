//! api::inbox: `GET /api/inbox`, the caller's events page by page.
//!
//! Pages are keyset scans in id order (UUIDv7: time order) from an opaque cursor, so walking
//! `next_cursor` to the end yields every event that was committed when the walk passed its
//! place exactly once, however many arrive meanwhile. `offset` is accepted for older clients
//! and ignored when a cursor is given. Runs on a query thread; every query is scoped by the
//! caller's organization first.

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postgres::types::ToSql;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{authenticate, ApiError, Request};
use crate::core::Core;
use crate::http::response::Response;
use crate::ids::{rfc3339, EventId, OrgId};

const LIMIT_DEFAULT: u32 = 100;
const LIMIT_MAX: u32 = 1000;
/// Deep offsets scan and discard every skipped row; past this, clients must use the cursor.
const OFFSET_MAX: u64 = 100_000;
/// First byte of a cursor: its format, so it can change without breaking clients.
const CURSOR_V1: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Pending,
    Delivered,
    Failed,
    All,
}

impl StatusFilter {
    fn column_value(self) -> Option<&'static str> {
        match self {
            StatusFilter::Pending => Some("pending"),
            StatusFilter::Delivered => Some("delivered"),
            StatusFilter::Failed => Some("failed"),
            StatusFilter::All => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxQuery {
    pub status: StatusFilter,
    pub kind: Option<String>,
    pub limit: u32,
    pub descending: bool,
    pub cursor: Option<EventId>,
    pub offset: u64,
}

pub fn encode_cursor(id: EventId) -> String {
    let mut raw = [0u8; 17];
    raw[0] = CURSOR_V1;
    raw[1..].copy_from_slice(id.0.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(text: &str) -> Option<EventId> {
    let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
    match raw.split_first() {
        Some((&CURSOR_V1, id)) => Some(EventId(Uuid::from_slice(id).ok()?)),
        _ => None,
    }
}

/// Parses the query string; pure, so every rule is unit-tested.
pub fn parse_query(query: &str) -> Result<InboxQuery, ApiError> {
    let bad = |name: &'static str, why: &str| ApiError::InvalidParameter(name, why.to_string());
    let mut q = InboxQuery {
        status: StatusFilter::Pending,
        kind: None,
        limit: LIMIT_DEFAULT,
        descending: true,
        cursor: None,
        offset: 0,
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "status" => {
                q.status = match &*value {
                    "pending" => StatusFilter::Pending,
                    "delivered" => StatusFilter::Delivered,
                    "failed" => StatusFilter::Failed,
                    "all" => StatusFilter::All,
                    _ => return Err(bad("status", "use pending, delivered, failed or all")),
                }
            }
            "type" => {
                if value.is_empty() || value.chars().count() > 255 {
                    return Err(bad("type", "must be 1..255 characters"));
                }
                q.kind = Some(value.into_owned());
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?
            }
            "order" => {
                q.descending = match &*value {
                    "desc" => true,
                    "asc" => false,
                    _ => return Err(bad("order", "use desc or asc")),
                }
            }
            "cursor" => {
                q.cursor = Some(
                    decode_cursor(&value)
                        .ok_or_else(|| bad("cursor", "not a cursor this server issued"))?,
                )
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
                    })?
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

#[derive(Serialize)]
struct Page {
    events: Vec<EventOut>,
    next_cursor: Option<String>,
    has_more: bool,
    limit: u32,
}

/// One page of `org`'s events; runs on a query thread.
fn fetch(
    client: &mut postgres::Client,
    org: OrgId,
    q: &InboxQuery,
) -> Result<(Vec<EventOut>, bool), postgres::Error> {
    let status = q.status.column_value();
    let mut sql = String::from(
        "SELECT id, type, payload::text, dedup_id, status, created_at, delivered_at
         FROM events WHERE org_id = $1",
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&org.0];
    if let Some(s) = &status {
        params.push(s);
        sql.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some(k) = &q.kind {
        params.push(k);
        sql.push_str(&format!(" AND type = ${}", params.len()));
    }
    if let Some(c) = &q.cursor {
        params.push(&c.0);
        let op = if q.descending { "<" } else { ">" };
        sql.push_str(&format!(" AND id {op} ${}", params.len()));
    }
    let fetch_rows = i64::from(q.limit) + 1;
    let offset = if q.cursor.is_some() {
        0
    } else {
        q.offset as i64
    };
    params.push(&fetch_rows);
    params.push(&offset);
    sql.push_str(&format!(
        " ORDER BY id {} LIMIT ${} OFFSET ${}",
        if q.descending { "DESC" } else { "ASC" },
        params.len() - 1,
        params.len()
    ));
    let rows = client.query(&sql, &params)?;
    let has_more = rows.len() > q.limit as usize;
    let events = rows
        .iter()
        .take(q.limit as usize)
        .map(|r| EventOut {
            id: r.get::<_, Uuid>(0).hyphenated().to_string(),
            kind: r.get(1),
            payload: RawValue::from_string(r.get(2)).expect("PostgreSQL returns valid JSON"),
            dedup_id: r.get(3),
            status: r.get(4),
            created_at: rfc3339(r.get(5)).to_string(),
            delivered_at: r
                .get::<_, Option<std::time::SystemTime>>(6)
                .map(|t| rfc3339(t).to_string()),
        })
        .collect();
    Ok((events, has_more))
}

pub async fn list(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = authenticate(core, req).await?;
    let q = parse_query(req.query)?;
    let limit = q.limit;
    let org_id = org.id;
    let (events, has_more) = core
        .shared
        .queries
        .run("inbox", move |c| fetch(c, org_id, &q))
        .await?;
    let next_cursor = match events.last() {
        Some(last) if has_more => Some(encode_cursor(EventId(
            last.id.parse().expect("ids we formatted parse"),
        ))),
        _ => None,
    };
    let page = Page {
        events,
        next_cursor,
        has_more,
        limit,
    };
    Ok(Response::json(
        200,
        serde_json::to_vec(&page).expect("a page serializes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pending_newest_first_100() {
        let q = parse_query("").unwrap();
        assert_eq!(q.status, StatusFilter::Pending);
        assert!(q.descending);
        assert_eq!((q.limit, q.offset, q.cursor, q.kind), (100, 0, None, None));
    }

    #[test]
    fn every_parameter_parses_and_bad_values_name_the_parameter() {
        let id = EventId::new_v7();
        let q = parse_query(&format!(
            "status=all&type=order.created&limit=5&order=asc&cursor={}&offset=3&unknown=1",
            encode_cursor(id)
        ))
        .unwrap();
        assert_eq!(q.status, StatusFilter::All);
        assert_eq!(q.kind.as_deref(), Some("order.created"));
        assert_eq!(
            (q.limit, q.descending, q.cursor, q.offset),
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
        ] {
            match parse_query(query) {
                Err(ApiError::InvalidParameter(p, _)) => assert_eq!(p, param, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }
}

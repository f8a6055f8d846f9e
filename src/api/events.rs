//! api::events: `POST /api/events` and `POST /api/events/batch`. Authenticate, validate, queue on
//! this core's ring, and (in durable mode) answer only once the persister reports the COMMIT.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::context::{AckMode, Context};
use super::error::{parse_body, ApiError};
use super::jsonb;
use crate::db;
use crate::db::events::{EventRow, JsonText};
use crate::db::orgs::Org;
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{now_micros, rfc3339, EventId, OrgId};
use crate::queue::{Entry, Event, Outcome, RingFull};
use crate::ratelimit::{self, Ask, Draw, Quota};

/// Most events in one `POST /api/events/batch`.
pub const BATCH_EVENTS_MAX: usize = 1000;
/// Longest `type` and `dedup_id`, in characters.
const TYPE_CHARS_MAX: usize = 255;
const DEDUP_ID_CHARS_MAX: usize = 255;

/// An event as the client sent it, borrowed from the body.
#[derive(Debug, PartialEq, Eq)]
pub struct EventIn<'a> {
    pub kind: Cow<'a, str>,
    pub payload: &'a str,
    pub dedup_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    dedup_id: Option<&'a RawValue>,
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::InvalidEvent(why.into())
}

fn string_field<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, ApiError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| invalid(format!("`{field}` must be a string")))
}

/// Validates an event body; pure, so it is unit-tested and benchmarked apart from I/O.
pub fn validate(body: &[u8]) -> Result<EventIn<'_>, ApiError> {
    let fields: Fields = parse_body(body, |why| {
        invalid(format!(
            "the body must be a JSON object with `type` and `payload`: {why}"
        ))
    })?;
    let kind = string_field(
        fields.kind.ok_or_else(|| invalid("`type` is required"))?,
        "type",
    )?;
    let kind_chars = kind.chars().count();
    if kind_chars == 0 || kind_chars > TYPE_CHARS_MAX {
        return Err(invalid(format!(
            "`type` must be 1..{TYPE_CHARS_MAX} characters"
        )));
    }
    if !kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(invalid("`type` may contain only A-Z a-z 0-9 . _ : -"));
    }
    let payload = fields
        .payload
        .ok_or_else(|| invalid("`payload` is required"))?
        .get();
    if !payload.starts_with('{') {
        return Err(invalid("`payload` must be a JSON object"));
    }
    if let Some(why) = jsonb::refusal(payload.as_bytes()) {
        return Err(invalid(format!("`payload` {why}")));
    }
    let dedup_id = match fields.dedup_id.filter(|r| r.get() != "null") {
        None => None,
        Some(raw) => {
            let d = string_field(raw, "dedup_id")?;
            let n = d.chars().count();
            if n == 0 || n > DEDUP_ID_CHARS_MAX {
                return Err(invalid(format!(
                    "`dedup_id` must be 1..{DEDUP_ID_CHARS_MAX} characters"
                )));
            }
            if d.contains('\0') {
                return Err(invalid("`dedup_id` must not contain NUL"));
            }
            Some(d)
        }
    };
    Ok(EventIn {
        kind,
        payload,
        dedup_id,
    })
}

pub async fn post(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let mut quota = None;
    let result = accept(ctx, org, req, &mut quota).await;
    let stats = ctx.core_stats();
    match &result {
        Ok(_) => stats.accepted.add(1),
        Err(ApiError::DuplicateEvent(_)) => stats.duplicates.add(1),
        Err(ApiError::Overloaded) => stats.overloaded.add(1),
        Err(ApiError::StorageUnavailable) => stats.unavailable.add(1),
        Err(_) => stats.rejected.add(1),
    }
    Ok(with_quota(result, quota))
}

/// The rate-limit state an ingest response reports: the tier's name and the quota.
type QuotaHeaders = Option<(String, Quota)>;

/// Every ingest response, error or not, carries the caller's rate-limit headers.
fn with_quota(result: Result<Response, ApiError>, quota: QuotaHeaders) -> Response {
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    if let Some((policy, q)) = quota {
        resp.headers.extend(ratelimit::headers(&policy, &q));
    }
    resp
}

/// Takes `n` tokens from the organization's bucket (none for unlimited tiers): from the tokens
/// this node leased from the bucket every node shares, or on the node's credit while a lease is
/// under way (see `ratelimit::lease`). When a request must wait for a lease and none comes
/// within `LEASE_WAIT`, the node's own bucket decides: ingest fails open.
async fn charge(
    ctx: &Context,
    org: &Org,
    n: u64,
    quota: &mut QuotaHeaders,
) -> Result<(), ApiError> {
    let Some(per_minute) = ctx.settings.tiers.get(&org.tier).and_then(|t| t.per_minute) else {
        return Ok(());
    };
    let shared = &ctx.limits.shared;
    let mut now = Instant::now();
    let give_up = now + LEASE_WAIT;
    let drawn = loop {
        let leased = match shared.draw(org.id, per_minute, n, now) {
            Draw::Taken { quota, lease } => {
                if let Some(ask) = lease {
                    start_lease(ctx, org.id, per_minute, ask, None);
                }
                break Ok(quota);
            }
            Draw::Refused(limited) => break Err(limited),
            Draw::Lease(ask) => lease(ctx, org.id, per_minute, ask, give_up).await,
            Draw::Wait if now < give_up => {
                monoio::time::sleep(LEASE_POLL).await;
                Ok(())
            }
            Draw::Wait => Err(()),
        };
        now = Instant::now();
        if leased.is_err() {
            shared.fail_open.fetch_add(1, Relaxed);
            break ctx.limits.orgs.take(org.id, per_minute, n, now);
        }
    };
    match drawn {
        Ok(q) => {
            *quota = Some((org.tier.clone(), q));
            Ok(())
        }
        Err(limited) => {
            *quota = Some((org.tier.clone(), limited.quota));
            Err(ApiError::RateLimited(limited.retry_after_s))
        }
    }
}

/// Longest a request waits for a lease of rate-limit tokens (its own, or one another request
/// started) before the node's own bucket decides for it.
const LEASE_WAIT: Duration = Duration::from_millis(250);
/// How often a request waiting for another's lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(1);

/// The job that takes lease `ask` of `org`'s shared bucket on a query thread. Its tokens are
/// this node's once the thread has them, whether or not anyone still waits; `done` hears
/// whether it took place.
fn lease_job(
    ctx: &Context,
    org: OrgId,
    per_minute: u64,
    ask: Ask,
    done: Option<oneshot::Sender<bool>>,
) -> impl FnOnce(Option<&mut postgres::Client>) + Send + 'static {
    let limits = ctx.limits.clone();
    move |client| {
        let leased = client.and_then(|c| {
            db::limits::lease(c, org, per_minute, ask.need, ask.want)
                .inspect_err(|e| {
                    tracing::warn!(
                        error = e as &dyn std::error::Error,
                        "rate limit lease failed"
                    );
                })
                .ok()
        });
        match leased {
            Some(l) => limits
                .shared
                .deposit(org, l.granted, l.left, Instant::now()),
            None => limits.shared.lease_failed(org),
        }
        if let Some(done) = done {
            let _ = done.send(leased.is_some());
        }
    }
}

/// Queues lease `ask` for `org` on a query thread (`done` hears how it went); false when no
/// thread can take it, and then no lease is in flight.
fn start_lease(
    ctx: &Context,
    org: OrgId,
    per_minute: u64,
    ask: Ask,
    done: Option<oneshot::Sender<bool>>,
) -> bool {
    let job = lease_job(ctx, org, per_minute, ask, done);
    let queued = ctx.queries.send(Work::Node, job).is_ok();
    if !queued {
        ctx.limits.shared.lease_failed(org);
    }
    queued
}

/// Takes lease `ask` for `org` and waits for it until `give_up`.
async fn lease(
    ctx: &Context,
    org: OrgId,
    per_minute: u64,
    ask: Ask,
    give_up: Instant,
) -> Result<(), ()> {
    let (tx, rx) = oneshot::channel();
    if !start_lease(ctx, org, per_minute, ask, Some(tx)) {
        return Err(());
    }
    let wait = give_up.saturating_duration_since(Instant::now());
    match monoio::time::timeout(wait, rx).await {
        Ok(Ok(true)) => Ok(()),
        _ => Err(()),
    }
}

/// The retention class `org`'s new events are stored in: its tier's retention, recorded in its
/// row before the first event in it is queued (an inbox page reads only the recorded classes),
/// then carried by the cached organization, so a class costs one statement per organization
/// per node.
async fn retention_class(ctx: &Context, org: &Org) -> Result<i16, ApiError> {
    let days = ctx.settings.tiers.retention_days(&org.tier) as i16;
    if org.keep_classes.contains(&days) {
        return Ok(days);
    }
    let generation = ctx.keys.generation();
    let id = org.id;
    ctx.queries
        .run(Work::Node, "record retention class", move |c| {
            db::orgs::add_class(c, id, days)
        })
        .await?;
    let mut known = org.clone();
    known.keep_classes.push(days);
    ctx.keys.insert_if_current(Arc::new(known), generation);
    Ok(days)
}

/// Turns a validated event into the queued form: id, creation time, and (durable mode) a
/// waiter slot and the storage deadline.
fn queued(ctx: &Context, org: &Org, keep_days: i16, event: EventIn<'_>, now: Instant) -> Event {
    let waiting = (ctx.settings.ack_mode == AckMode::Durable).then(|| ctx.waiters.register(now));
    Event {
        row: EventRow {
            org: org.id,
            id: EventId::new_v7(),
            created_at: now_micros(),
            kind: event.kind.into(),
            dedup_id: event.dedup_id.map(Into::into),
            payload: JsonText(event.payload.as_bytes().into()),
            keep_days,
        },
        waiter: waiting.map(|(waiter, _)| waiter),
        enqueued_at: now,
        deadline: waiting.map(|(_, deadline)| deadline),
    }
}

/// Queues `entry` on this core's ring; a full ring gives the entry back, and its waiter slots
/// are freed.
fn push(ctx: &Context, entry: Entry) -> Result<(), ApiError> {
    ctx.hub.push(ctx.core, entry).map_err(|RingFull(refused)| {
        let slots = match &refused {
            Entry::One(e) => std::slice::from_ref(e),
            Entry::Group(g) => g.as_slice(),
        };
        for w in slots.iter().filter_map(|e| e.waiter) {
            ctx.waiters.cancel(w.slot);
        }
        ApiError::Overloaded
    })
}

async fn accept(
    ctx: &Context,
    org: &Org,
    req: &Request<'_>,
    quota: &mut QuotaHeaders,
) -> Result<Response, ApiError> {
    let valid = validate(req.body)?;
    charge(ctx, org, 1, quota).await?;
    let keep_days = retention_class(ctx, org).await?;
    let event = queued(ctx, org, keep_days, valid, Instant::now());
    let mut body = Vec::with_capacity(160);
    let _ = write!(
        body,
        r#"{{"id":"{}","status":"accepted","message":"Event accepted","type":"{}","created_at":"{}"}}"#,
        event.row.id,
        event.row.kind,
        rfc3339(event.row.created_at)
    );
    let slot = event.waiter.map(|w| w.slot);
    push(ctx, Entry::One(event))?;
    let Some(slot) = slot else {
        return Ok(Response::json(202, body));
    };
    match ctx.waiters.outcomes(&[slot]).await.remove(0) {
        Outcome::Committed => Ok(Response::json(202, body)),
        Outcome::Duplicate(holder) => Err(ApiError::DuplicateEvent(holder)),
        Outcome::Rejected(why) => Err(invalid(format!("PostgreSQL refused the event: {why}"))),
        Outcome::Unavailable => Err(ApiError::StorageUnavailable),
    }
}

#[derive(Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    events: Option<Vec<&'a RawValue>>,
}

/// One item of a batch's answer, in request order. Fields in alphabetical order, as the
/// answer has always listed them.
#[derive(Serialize)]
struct BatchItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_text")]
    id: Option<EventId>,
    status: u16,
}

#[derive(Serialize)]
struct BatchOut {
    accepted: u64,
    results: Vec<BatchItem>,
}

/// An id written as its text, with no string allocated for it.
fn as_text<S: Serializer>(id: &Option<EventId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

/// `POST /api/events/batch`: up to `BATCH_EVENTS_MAX` events, each validated on its own, all
/// valid ones committed in one transaction; results in request order.
pub async fn post_batch(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let stats = ctx.core_stats();
    let mut quota = None;
    let result = accept_batch(ctx, org, req, &mut quota).await;
    match &result {
        Ok((_, counts)) => {
            stats.accepted.add(counts[0]);
            stats.duplicates.add(counts[1]);
            stats.rejected.add(counts[2]);
        }
        Err(ApiError::Overloaded) => stats.overloaded.add(1),
        Err(ApiError::StorageUnavailable) => stats.unavailable.add(1),
        Err(_) => stats.rejected.add(1),
    }
    // A batch serves its tenant (see `http::pace`) when any of its events is stored, now or
    // before: one that refuses them all is a refusal, though answered 200.
    let decided = |(r, counts): (Response, [u64; 3])| r.serving(counts[0] + counts[1] > 0);
    Ok(with_quota(result.map(decided), quota))
}

/// The response, and how many items were accepted, duplicates, and refused.
async fn accept_batch(
    ctx: &Context,
    org: &Org,
    req: &Request<'_>,
    quota: &mut QuotaHeaders,
) -> Result<(Response, [u64; 3]), ApiError> {
    let input: BatchIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!("expected {{\"events\": [event, ...]}}: {why}"))
    })?;
    let raw = input
        .events
        .filter(|e| (1..=BATCH_EVENTS_MAX).contains(&e.len()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("`events` must hold 1 to {BATCH_EVENTS_MAX} events"))
        })?;
    let checked: Vec<Result<EventIn, ApiError>> =
        raw.iter().map(|r| validate(r.get().as_bytes())).collect();
    // One token per event that will be stored; all or none.
    let valid = checked.iter().filter(|c| c.is_ok()).count() as u64;
    let mut keep_days = 0;
    if valid > 0 {
        charge(ctx, org, valid, quota).await?;
        keep_days = retention_class(ctx, org).await?;
    }
    let now = Instant::now();
    // Each item: the event's position in `group` or why it was refused.
    let mut items: Vec<Result<usize, ApiError>> = Vec::with_capacity(checked.len());
    let mut group = Vec::with_capacity(valid as usize);
    for c in checked {
        items.push(c.map(|e| {
            group.push(queued(ctx, org, keep_days, e, now));
            group.len() - 1
        }));
    }
    let ids: Vec<EventId> = group.iter().map(|e| e.row.id).collect();
    let slots: Vec<u32> = group
        .iter()
        .filter_map(|e| e.waiter.map(|w| w.slot))
        .collect();
    let mut found = vec![Outcome::Committed; group.len()];
    if !group.is_empty() {
        push(ctx, Entry::Group(group))?;
        if !slots.is_empty() {
            found = ctx.waiters.outcomes(&slots).await;
        }
    }
    if found.contains(&Outcome::Unavailable) {
        return Err(ApiError::StorageUnavailable);
    }
    let mut counts = [0u64; 3];
    let item = |status, code, error, id| BatchItem {
        code,
        error,
        id,
        status,
    };
    let results: Vec<BatchItem> = items
        .into_iter()
        .map(|item_of| {
            let (counted, out) = match item_of {
                Err(e) => (2, item(400, Some(e.code()), Some(e.message()), None)),
                Ok(i) => match &found[i] {
                    Outcome::Committed => (0, item(202, None, None, Some(ids[i]))),
                    Outcome::Duplicate(holder) => {
                        (1, item(409, Some("duplicate_event"), None, Some(*holder)))
                    }
                    Outcome::Rejected(why) => (
                        2,
                        item(
                            400,
                            Some("invalid_event"),
                            Some(format!("PostgreSQL refused the event: {why}")),
                            None,
                        ),
                    ),
                    Outcome::Unavailable => unreachable!("answered 503 above"),
                },
            };
            counts[counted] += 1;
            out
        })
        .collect();
    let out = BatchOut {
        accepted: counts[0],
        results,
    };
    let body = serde_json::to_vec(&out).expect("a batch answer serializes");
    Ok((Response::json(200, body), counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> String {
        validate(body.as_bytes()).unwrap_err().code().to_string()
    }

    #[test]
    fn a_valid_event_borrows_its_fields() {
        let e = validate(
            br#"{"type":"order.created","payload":{"a":[1,{"b":null}]},"dedup_id":"x-1"}"#,
        )
        .unwrap();
        assert_eq!(e.kind, "order.created");
        assert_eq!(e.payload, r#"{"a":[1,{"b":null}]}"#);
        assert_eq!(e.dedup_id.as_deref(), Some("x-1"));
        let e = validate(br#"{"type":"t","payload":{},"dedup_id":null,"extra":1}"#).unwrap();
        assert_eq!(e.dedup_id, None);
    }

    #[test]
    fn bad_bytes_are_invalid_json_and_bad_shapes_invalid_event() {
        let long = format!(r#"{{"type":"{}","payload":{{}}}}"#, "a".repeat(256));
        let cases = [
            ("", "invalid_json"),
            ("{\"type\":", "invalid_json"),
            ("nope", "invalid_json"),
            ("[1,2]", "invalid_event"),
            (r#"{"payload":{}}"#, "invalid_event"),
            (r#"{"type":"t"}"#, "invalid_event"),
            (r#"{"type":"t","payload":[1]}"#, "invalid_event"),
            (r#"{"type":"t","payload":"s"}"#, "invalid_event"),
            (r#"{"type":5,"payload":{}}"#, "invalid_event"),
            (r#"{"type":"","payload":{}}"#, "invalid_event"),
            (r#"{"type":"has space","payload":{}}"#, "invalid_event"),
            (
                r#"{"type":"t","payload":{},"dedup_id":""}"#,
                "invalid_event",
            ),
            (r#"{"type":"t","payload":{},"dedup_id":7}"#, "invalid_event"),
            (&long, "invalid_event"),
        ];
        for (body, expected) in cases {
            assert_eq!(code(body), expected, "{body}");
        }
    }

    #[test]
    fn escapes_jsonb_cannot_store_are_refused_and_others_pass() {
        for body in [
            r#"{"type":"t","payload":{"a":"\u0000"}}"#,
            r#"{"type":"t","payload":{"a":"\ud800"}}"#,
            r#"{"type":"t","payload":{"a":"\udc00x"}}"#,
            r#"{"type":"t","payload":{},"dedup_id":"\u0000"}"#,
        ] {
            assert_eq!(code(body), "invalid_event", "{body}");
        }
        assert!(validate(br#"{"type":"t","payload":{"a":"\\u0000 \ud83d\ude00 \n"}}"#).is_ok());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn judged(body: &[u8]) -> Result<(), TestCaseError> {
            match validate(body) {
                Ok(e) => {
                    prop_assert!(e.payload.starts_with('{'), "{}", e.payload);
                    prop_assert!(jsonb::refusal(e.payload.as_bytes()).is_none());
                }
                Err(ApiError::InvalidJson(_) | ApiError::InvalidEvent(_)) => {}
                Err(other) => prop_assert!(false, "{:?}", other),
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_body_is_an_event_or_a_400(body in prop::collection::vec(any::<u8>(), 0..300)) {
                judged(&body)?;
            }

            #[test]
            fn event_shaped_bodies_are_an_event_or_a_400(
                kind in "[a-z.\\x00]{0,6}|\\PC{0,4}",
                payload in r#"\{\}|\{"a":[0-9eE.+-]{1,12}\}|\[\]|"x"|null|\{"a":"[\\\\u0-9a-fA-FdD]{0,14}"\}"#,
                dedup in r#"null|""|"[^"\\\\]{0,6}"|"\\\\u0000"|7"#,
            ) {
                let body = format!(r#"{{"type":"{kind}","payload":{payload},"dedup_id":{dedup}}}"#);
                judged(body.as_bytes())?;
            }
        }
    }
}

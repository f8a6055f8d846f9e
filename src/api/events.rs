//! api::events: `POST /api/events`. Authenticate, validate, queue on this core's ring, and (in
//! durable mode) answer only once the persister reports the COMMIT.

use std::borrow::Cow;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{authenticate, parse_body, ApiError, Request};
use crate::config::AckMode;
use crate::core::Core;
use crate::http::response::Response;
use crate::ids::{now_micros, rfc3339, EventId};
use crate::queue::{Event, Outcome, Waiter};

/// Longest `type` and `dedup_id`, in characters.
const TYPE_CHARS_MAX: usize = 255;
const DEDUP_ID_CHARS_MAX: usize = 255;
/// Extra wait on top of the storage budget before a core stops waiting for a persister on its
/// own. Persisters answer every event by its deadline; this only guards against a persister
/// stuck inside one database call.
const WAIT_GRACE: Duration = Duration::from_secs(5);

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
    check_jsonb_text(payload)?;
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

/// Refuses the escapes valid JSON allows but PostgreSQL's `jsonb` does not store: `\u0000` and
/// unpaired UTF-16 surrogates. Caught here, they are a clear 400 instead of a failed batch.
fn check_jsonb_text(json: &str) -> Result<(), ApiError> {
    let b = json.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'\\') {
        i += off;
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape is two bytes
            continue;
        }
        let unit = hex(i + 2).unwrap_or(0xFFFF);
        i += 6;
        match unit {
            0 => return Err(invalid("`payload` must not contain \\u0000")),
            0xD800..=0xDBFF => {
                let low = (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
                    .then(|| hex(i + 2))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(invalid("`payload` has an unpaired UTF-16 surrogate escape"));
                }
                i += 6;
            }
            0xDC00..=0xDFFF => {
                return Err(invalid("`payload` has an unpaired UTF-16 surrogate escape"))
            }
            _ => {}
        }
    }
    Ok(())
}

pub async fn post(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let result = accept(core, req).await;
    let stats = &core.shared.stats.cores[core.id];
    match &result {
        Ok(_) => stats.accepted.add(1),
        Err(ApiError::DuplicateEvent(_)) => stats.duplicates.add(1),
        Err(ApiError::Overloaded) => stats.overloaded.add(1),
        Err(ApiError::StorageUnavailable) => stats.unavailable.add(1),
        Err(_) => stats.rejected.add(1),
    }
    result
}

async fn accept(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = authenticate(core, req).await?;
    let event = validate(req.body)?;
    let shared = &core.shared;
    let id = EventId::new_v7();
    let created_at = now_micros();
    let mut body = Vec::with_capacity(160);
    let _ = write!(
        body,
        r#"{{"id":"{id}","status":"accepted","message":"Event accepted","type":"{}","created_at":"{}"}}"#,
        event.kind,
        rfc3339(created_at)
    );
    let slot = (shared.config.ack_mode == AckMode::Durable).then(|| core.waiters.register());
    let now = Instant::now();
    let queued = Event {
        org: org.id,
        id,
        created_at,
        kind: event.kind.into(),
        dedup_id: event.dedup_id.map(Into::into),
        payload: event.payload.as_bytes().into(),
        waiter: slot.map(|slot| Waiter {
            core: core.id as u16,
            slot,
        }),
        enqueued_at: now,
        deadline: slot.map(|_| now + shared.config.storage_wait),
    };
    if shared.hub.push(core.id, queued).is_err() {
        if let Some(slot) = slot {
            core.waiters.cancel(slot);
        }
        return Err(ApiError::Overloaded);
    }
    let Some(slot) = slot else {
        return Ok(Response::json(202, body));
    };
    let budget = shared.config.storage_wait + WAIT_GRACE;
    let outcome = match monoio::time::timeout(budget, core.waiters.wait(slot)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(
                core = core.id,
                "no outcome from the persisters within the storage budget"
            );
            Outcome::Unavailable
        }
    };
    match outcome {
        Outcome::Committed => Ok(Response::json(202, body)),
        Outcome::Duplicate(holder) => Err(ApiError::DuplicateEvent(holder)),
        Outcome::Rejected(why) => Err(invalid(format!("PostgreSQL refused the event: {why}"))),
        Outcome::Unavailable => Err(ApiError::StorageUnavailable),
    }
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
}

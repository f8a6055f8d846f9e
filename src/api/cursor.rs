//! api::cursor: the opaque cursors the API hands out to go on from (inbox pages, attempt pages,
//! replays): a format byte, then fixed-size fields, in URL-safe base64 without padding. Only
//! the bytes; what the fields mean is each route's.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::ids::EventId;

/// First byte of every cursor: its format, so it can change without breaking clients.
const CURSOR_V1: u8 = 1;

/// A cursor holding `fields`, in order.
pub(super) fn encode(fields: &[&[u8]]) -> String {
    let mut raw = vec![CURSOR_V1];
    for f in fields {
        raw.extend_from_slice(f);
    }
    URL_SAFE_NO_PAD.encode(raw)
}

/// The `N` bytes of fields of a cursor `encode` made; `None` for any other text.
pub(super) fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
    match raw.split_first() {
        Some((&CURSOR_V1, fields)) => fields.try_into().ok(),
        _ => None,
    }
}

/// A time as a field: microseconds since the epoch.
pub(super) fn time_field(t: SystemTime) -> [u8; 8] {
    let micros = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    micros.to_be_bytes()
}

pub(super) fn field_time(bytes: [u8; 8]) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::from_be_bytes(bytes))
}

pub(super) fn field_id(bytes: [u8; 16]) -> EventId {
    EventId(uuid::Uuid::from_bytes(bytes))
}

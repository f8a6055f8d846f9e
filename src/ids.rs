//! ids: newtype identifiers, parsed and validated at the boundary so no raw strings or bare
//! UUIDs cross modules. Imports nothing of the crate.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// An organization (tenant). Every data-access function takes one first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(pub Uuid);

/// An event: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Uuid);

/// SHA-256 of a whole API key: what the database stores and the key cache is keyed by. The
/// plaintext key never leaves the request that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl OrgId {
    pub fn new() -> OrgId {
        OrgId(Uuid::new_v4())
    }
}

impl Default for OrgId {
    fn default() -> Self {
        Self::new()
    }
}

impl EventId {
    pub fn new_v7() -> EventId {
        EventId(Uuid::now_v7())
    }

    /// The smallest UUIDv7 of the millisecond `t` falls in: ids are ordered by creation time,
    /// so `id >= EventId::first_at(t)` is "created at `t` or later", to the millisecond.
    pub fn first_at(t: SystemTime) -> EventId {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        EventId(Uuid::from_bytes(b))
    }

    /// The millisecond this id was created in (`first_at`'s inverse for a UUIDv7).
    pub fn millis(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl KeyHash {
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(key).into())
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The current time cut to whole microseconds: PostgreSQL's `timestamptz` resolution, so the
/// `created_at` a response shows is exactly the stored one.
pub fn now_micros() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH + std::time::Duration::from_micros(since.as_micros() as u64)
}

/// RFC 3339 UTC with microseconds, as the contract shows every timestamp.
pub fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_micros(t)
}

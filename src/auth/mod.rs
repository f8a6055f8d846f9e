//! auth: API keys and the key-hash → organization cache the cores share.
//!
//! A key is `trg_` + 64 hex digits (256 random bits) + 8 hex digits (CRC-32 of those bits), so a
//! mistyped or made-up key is refused without a database round trip. Only SHA-256 of the key is
//! stored; the plaintext exists once, in the response that creates it. Never logs a key.
//!
//! `authenticate` is the one way a request's key becomes an organization: the shared cache,
//! else `db::orgs` on a query thread. Imports `db`, `ids`, `shutdown` and `stats`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

use crate::db::listen::{self, Listener};
use crate::db::orgs::{self, Org, KEYS_CHANNEL, ROTATION_CHANNEL};
use crate::db::{QueryError, QueryPool, Work};
use crate::ids::{KeyHash, OrgId};
use crate::shutdown::Stop;

pub const KEY_PREFIX: &str = "trg_";
const RANDOM_BYTES: usize = 32;
const CHECKSUM_HEX: usize = 8;
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_BYTES * 2 + CHECKSUM_HEX;
/// How much of a key `GET /api/keys` shows: the prefix and 8 random digits, enough to tell keys
/// apart, far too little to guess the rest.
pub const KEY_SHOWN_LEN: usize = KEY_PREFIX.len() + 8;
/// Cached organizations. Past this the cache starts over: it is only a cache, and a bound keeps a
/// flood of distinct valid keys from growing it without end.
const CACHE_ENTRIES_MAX: usize = 100_000;
/// Prefixes of issued keys a node knows at most (a `HashSet<u32>` of this many takes ~40 MB);
/// keys of prefixes past it are looked up as if their prefix were unknown.
const ISSUED_PREFIXES_MAX: usize = 4_000_000;

/// A new key: the plaintext (shown once) and its hash (stored).
pub struct NewKey {
    pub plaintext: String,
    pub hash: KeyHash,
}

impl NewKey {
    pub fn generate() -> NewKey {
        let mut random = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut random).expect("the OS random source failed");
        let mut plaintext = String::with_capacity(KEY_LEN);
        plaintext.push_str(KEY_PREFIX);
        plaintext.push_str(&hex::encode(random));
        plaintext.push_str(&format!("{:08x}", crc32fast::hash(&random)));
        debug_assert_eq!(plaintext.len(), KEY_LEN);
        let hash = KeyHash::of(plaintext.as_bytes());
        NewKey { plaintext, hash }
    }

    pub fn shown_prefix(&self) -> &str {
        &self.plaintext[..KEY_SHOWN_LEN]
    }
}

/// A presented key of an issued key's shape: its hash, to look up, and its prefix (the first
/// 32 of its random bits, which `GET /api/keys` shows), to tell keys of no issued prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented {
    pub hash: KeyHash,
    pub prefix: u32,
}

/// The prefix of a key shown as `shown` (`KEY_SHOWN_LEN` characters: `trg_` and 8 hex digits).
pub fn prefix_of_shown(shown: &str) -> Option<u32> {
    let digits = shown.strip_prefix(KEY_PREFIX)?;
    u32::from_str_radix(digits.get(..8)?, 16).ok()
}

/// Checks a presented key's shape and checksum; `None` for a key that cannot have been issued.
/// No I/O.
pub fn check_format(key: &[u8]) -> Option<Presented> {
    if key.len() != KEY_LEN || !key.starts_with(KEY_PREFIX.as_bytes()) {
        return None;
    }
    let body = &key[KEY_PREFIX.len()..];
    let mut random = [0u8; RANDOM_BYTES];
    hex::decode_to_slice(&body[..RANDOM_BYTES * 2], &mut random).ok()?;
    let mut sum = [0u8; 4];
    hex::decode_to_slice(&body[RANDOM_BYTES * 2..], &mut sum).ok()?;
    if u32::from_be_bytes(sum) != crc32fast::hash(&random) {
        return None;
    }
    Some(Presented {
        hash: KeyHash::of(key),
        prefix: u32::from_be_bytes(random[..4].try_into().expect("4 bytes")),
    })
}

/// Key hash → organization, shared by every core. Reads take a read lock for one map look-up and
/// never across an `.await`. `forget_org` drops an organization's entries at once for every core
/// (key rotation) and bumps the generation, so that a look-up that raced with it can tell.
///
/// Beside it, the prefixes of every issued key (read when the listener connects, then learned
/// as keys are issued on any node): a key of a prefix no issued key has was never issued, or was
/// issued a moment ago on another node. The API looks such keys up only within a node-wide
/// budget, so that guessing cannot keep the query threads busy, nor spend the budget of the
/// tenants whose keys are merely not cached yet.
#[derive(Default)]
pub struct KeyCache {
    map: RwLock<HashMap<KeyHash, Arc<Org>>>,
    generation: AtomicU64,
    issued: RwLock<HashSet<u32>>,
    /// The issued prefixes have been read once.
    issued_loaded: AtomicBool,
}

impl KeyCache {
    pub fn get(&self, hash: &KeyHash) -> Option<Arc<Org>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let org = map.get(hash)?;
        // The map compared hashes of keys, not keys; this compare is the one that decides.
        bool::from(org.key_hash.0.ct_eq(&hash.0)).then(|| org.clone())
    }

    /// Changes whenever entries are forgotten. A database look-up reads it before it starts;
    /// if it changed meanwhile, a rotation may have revoked the key the look-up found.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches `org` unless entries were forgotten since `generation` was read.
    pub fn insert_if_current(&self, org: Arc<Org>, generation: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        if map.len() >= CACHE_ENTRIES_MAX {
            map.clear();
        }
        map.insert(org.key_hash, org);
        true
    }

    pub fn forget_org(&self, id: OrgId) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, org| org.id != id);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a key of `prefix` may have been issued: its prefix is an issued key's, or the
    /// issued prefixes have not been read yet.
    pub fn may_be_issued(&self, prefix: u32) -> bool {
        !self.issued_loaded.load(Ordering::Acquire)
            || self
                .issued
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&prefix)
    }

    /// Every issued key's prefix, as just read: replaces what was known.
    pub fn issued_are(&self, prefixes: HashSet<u32>) {
        *self.issued.write().unwrap_or_else(|e| e.into_inner()) = prefixes;
        self.issued_loaded.store(true, Ordering::Release);
    }

    /// A key of `prefix` was issued.
    pub fn issued(&self, prefix: u32) {
        let mut set = self.issued.write().unwrap_or_else(|e| e.into_inner());
        if set.len() < ISSUED_PREFIXES_MAX {
            set.insert(prefix);
        }
    }

    pub fn forget_all(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a well-formed key unlocks nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// A key that was never issued, or was revoked.
    Invalid,
    /// The database could not be asked.
    Query(QueryError),
}

/// The organization whose key hashes to `hash` (see `check_format`): from the shared cache,
/// else from PostgreSQL on a query thread.
pub async fn authenticate(
    cache: &KeyCache,
    queries: &QueryPool,
    hash: KeyHash,
) -> Result<Arc<Org>, AuthError> {
    loop {
        if let Some(org) = cache.get(&hash) {
            return Ok(org);
        }
        let generation = cache.generation();
        let found = queries
            .run(Work::Node, "key lookup", move |c| {
                orgs::find_by_key(c, &hash)
            })
            .await
            .map_err(AuthError::Query)?;
        let org = Arc::new(found.ok_or(AuthError::Invalid)?);
        // A rotation that landed while the query ran may have revoked this very key: look
        // again rather than let a revoked key through.
        if cache.insert_if_current(org.clone(), generation) {
            return Ok(org);
        }
    }
}

/// Keeps this node's cache in step with every node sharing the database: forgets the
/// organizations announced on `ROTATION_CHANNEL` and learns the prefixes of keys announced on
/// `KEYS_CHANNEL`. Each time it connects it reads every issued prefix, and after a reconnect
/// it forgets every cached organization, since rotations may have gone unheard meanwhile.
pub fn spawn_rotation_listener(
    db: postgres::Config,
    cache: Arc<KeyCache>,
    stop: Arc<Stop>,
) -> std::thread::JoinHandle<()> {
    listen::spawn(
        "key-listener",
        "key listener",
        db,
        &[ROTATION_CHANNEL, KEYS_CHANNEL],
        stop,
        KeyNotices(cache),
    )
}

struct KeyNotices(Arc<KeyCache>);

impl Listener for KeyNotices {
    fn connected(
        &mut self,
        client: &mut postgres::Client,
        again: bool,
    ) -> Result<(), postgres::Error> {
        let issued = orgs::issued_prefixes(client, ISSUED_PREFIXES_MAX)?;
        self.0
            .issued_are(issued.iter().filter_map(|p| prefix_of_shown(p)).collect());
        if again {
            self.0.forget_all();
        }
        Ok(())
    }

    fn heard(
        &mut self,
        _: &mut postgres::Client,
        notices: Vec<postgres::Notification>,
    ) -> Result<(), postgres::Error> {
        for n in notices {
            if n.channel() == KEYS_CHANNEL {
                if let Some(p) = prefix_of_shown(n.payload()) {
                    self.0.issued(p);
                }
                continue;
            }
            match n.payload().parse() {
                Ok(org) => self.0.forget_org(OrgId(org)),
                Err(_) => self.0.forget_all(),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_pass_the_format_check_and_hash_the_same() {
        let k = NewKey::generate();
        assert!(k.plaintext.starts_with(KEY_PREFIX));
        let presented = check_format(k.plaintext.as_bytes()).unwrap();
        assert_eq!(presented.hash, k.hash);
        assert_eq!(prefix_of_shown(k.shown_prefix()), Some(presented.prefix));
        assert_ne!(NewKey::generate().plaintext, k.plaintext);
    }

    #[test]
    fn a_changed_digit_or_length_fails_the_checksum() {
        let k = NewKey::generate().plaintext.into_bytes();
        for i in KEY_PREFIX.len()..k.len() {
            let mut bad = k.clone();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(check_format(&bad), None, "digit {i}");
        }
        assert_eq!(check_format(&k[..k.len() - 1]), None);
        assert_eq!(check_format(b"not-a-key"), None);
    }
}

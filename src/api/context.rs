//! api::context: what the handlers may use. One `Context` per core: the API's settings, the
//! rings, the query threads, the key cache, the rate limiters, the stats, and the core's own
//! waiters. Handlers get nothing else of the server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::renders::Renders;
use crate::auth::{self, AuthError, KeyCache, Presented};
use crate::db::events::Status;
use crate::db::orgs::Org;
use crate::db::partitions::Class;
use crate::db::QueryPool;
use crate::hooks::Hooks;
use crate::http::{Guards, Request, Response};
use crate::ids::{EventId, OrgId};
use crate::queue::{Hub, Waiters};
use crate::ratelimit::{Leases, Limited, Limiter};
use crate::stats::{CoreStats, Stats};
use crate::tiers::{Tier, Tiers};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// 2xx only after the COMMIT that holds the event.
    Durable,
    /// 2xx once the event is in the core's ring; a crash loses queued events.
    Enqueued,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Durable => "durable",
            AckMode::Enqueued => "enqueued",
        }
    }
}

/// The API's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ack_mode: AckMode,
    /// Durable mode: longest an ingest request waits for its commit, then 503 (the event is
    /// then never stored). Goes to each core's `Waiters`, which enforce it.
    pub storage_wait: Duration,
    pub tiers: Tiers,
    /// How long a day of the tiers' retentions lasts (a day, but in tests).
    pub retention_day: Duration,
    /// Self-serve key generations per minute per client address.
    pub keygen_per_minute: u64,
    /// The highest tier self-serve signup may choose.
    pub keygen_tier_max: Tier,
    /// When set, key generation and the stats routes need it as a bearer token.
    pub admin_token: Option<String>,
    /// Accept webhook URLs on private, loopback and link-local addresses.
    pub webhook_allow_private: bool,
    /// Without an admin token, `/metrics` and the dashboard answer clients on other hosts too.
    pub operator_remote: bool,
}

/// An event id as a client wrote it; anything that is not a UUID cannot name an event.
pub(super) fn event_id(text: &str) -> Option<EventId> {
    uuid::Uuid::parse_str(text).ok().map(EventId)
}

/// A status filter as clients write it (the inbox's `status`, a replay's): `Some(None)` for
/// `all`; `None` for anything else.
pub(super) fn status_filter(text: &str) -> Option<Option<Status>> {
    match text {
        "pending" => Some(Some(Status::Pending)),
        "delivered" => Some(Some(Status::Delivered)),
        "failed" => Some(Some(Status::Failed)),
        "all" => Some(None),
        _ => None,
    }
}

/// The event id a path names between `prefix` and `suffix`; anything that is not a UUID names
/// no event, which is the same 404 as an unknown or another organization's event.
pub(super) fn path_event_id(path: &str, prefix: &str, suffix: &str) -> Result<EventId, ApiError> {
    path.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .and_then(event_id)
        .ok_or(ApiError::EventNotFound)
}

/// Token buckets shared by every core, so a limit holds however a client's connections spread.
#[derive(Default)]
pub struct Limits {
    /// Ingest tokens per organization, by tier, leased from the bucket every node shares.
    pub shared: Leases<OrgId>,
    /// The node's own ingest buckets: used while the shared ones cannot be reached.
    pub orgs: Limiter<OrgId>,
    /// Self-serve key generation per client address (`client_bucket`).
    pub keygen: Limiter<IpAddr>,
    /// Events queued again (redeliver, replay) per organization, at its tier's rate.
    pub redeliveries: Limiter<OrgId>,
    /// Keys presented that no organization holds: of an issued key's prefix, per prefix; of no
    /// issued prefix, per client address (`client_bucket`) and node-wide.
    pub unknown_by_prefix: Limiter<u32>,
    pub unknown_by_address: Limiter<IpAddr>,
    pub unknown_on_node: Limiter<()>,
}

impl Limits {
    /// Takes one from the budget of unknown keys of an issued key's `prefix` (`None`: of
    /// `address` and of the node), or with `take` false only checks that there is one.
    fn unknown_key(&self, prefix: Option<u32>, address: IpAddr, take: bool) -> Result<(), Limited> {
        fn draw<K: std::hash::Hash + Eq + Copy>(
            l: &Limiter<K>,
            key: K,
            per_minute: u64,
            take: bool,
        ) -> Result<(), Limited> {
            let now = Instant::now();
            let drawn = if take {
                l.take(key, per_minute, 1, now)
            } else {
                l.check(key, per_minute, 1, now)
            };
            drawn.map(drop)
        }
        match prefix {
            Some(p) => draw(
                &self.unknown_by_prefix,
                p,
                UNKNOWN_KEYS_PER_PREFIX_PER_MINUTE,
                take,
            ),
            None => draw(
                &self.unknown_by_address,
                address,
                UNKNOWN_KEYS_PER_ADDRESS_PER_MINUTE,
                take,
            )
            .and_then(|()| {
                draw(
                    &self.unknown_on_node,
                    (),
                    UNKNOWN_KEYS_PER_NODE_PER_MINUTE,
                    take,
                )
            }),
        }
    }
}

/// Look-ups of keys no organization holds, per minute (their burst too), before further keys
/// of the same kind are refused 429 unlooked-up: guessing keys would otherwise keep the node's
/// query thread busy, and with it every tenant's first look-ups, leases and health checks.
///
/// A key is either of an issued key's prefix (every valid key not cached yet, after a restart
/// say) or not (guesses, and keys issued on another node a moment ago). The first kind is
/// limited per prefix: only a tenant crafting keys of its own prefix spends that budget, and
/// only its own keys share it. The second kind is limited per client address and, since behind
/// a load balancer every client has one address, node-wide: a budget the first kind, every
/// innocent uncached key, never draws on.
const UNKNOWN_KEYS_PER_PREFIX_PER_MINUTE: u64 = 60;
const UNKNOWN_KEYS_PER_ADDRESS_PER_MINUTE: u64 = 60;
const UNKNOWN_KEYS_PER_NODE_PER_MINUTE: u64 = 1200;

/// The bucket a client address draws from: an IPv6 client's whole /64, which one host
/// commonly holds, counts as one address.
pub(super) fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// What the API needs from the rest of the server, built once; each core's `Context` takes
/// its own handles from it.
pub struct Shared {
    settings: Arc<Settings>,
    hub: Arc<Hub>,
    queries: QueryPool,
    keys: Arc<KeyCache>,
    stats: Arc<Stats>,
    limits: Arc<Limits>,
    renders: Arc<Renders>,
    guards: Guards,
    hooks: Arc<Hooks>,
}

impl Shared {
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        queries: QueryPool,
        keys: Arc<KeyCache>,
        stats: Arc<Stats>,
        guards: Guards,
        hooks: Arc<Hooks>,
    ) -> Shared {
        Shared {
            settings: Arc::new(settings),
            hub,
            queries,
            keys,
            stats,
            limits: Arc::default(),
            renders: Arc::default(),
            guards,
            hooks,
        }
    }
}

/// One core's API: the handler its connections call.
pub struct Context {
    pub(super) core: usize,
    pub(super) settings: Arc<Settings>,
    pub(super) hub: Arc<Hub>,
    pub(super) queries: QueryPool,
    pub(super) keys: Arc<KeyCache>,
    pub(super) stats: Arc<Stats>,
    pub(super) limits: Arc<Limits>,
    /// The operator's figures: the budget of fresh renders, and the last ones.
    pub(super) renders: Arc<Renders>,
    /// The node's bound on large bodies (an inbox page leases what it holds), and the pace of
    /// anonymous answers (shown in the stats).
    pub(super) guards: Guards,
    /// This node's view of webhook endpoints: a change made here applies to it at once.
    pub(super) hooks: Arc<Hooks>,
    pub(super) waiters: Waiters,
}

impl Context {
    /// The retention class of `org`'s events: its tier's.
    pub fn retention(&self, org: &Org) -> Class {
        let days = self.settings.tiers.retention_days(&org.tier);
        Class::new(days, self.settings.retention_day)
    }

    pub fn new(core: usize, shared: &Shared) -> Context {
        Context {
            core,
            settings: shared.settings.clone(),
            hub: shared.hub.clone(),
            queries: shared.queries.clone(),
            keys: shared.keys.clone(),
            stats: shared.stats.clone(),
            limits: shared.limits.clone(),
            renders: shared.renders.clone(),
            guards: shared.guards.clone(),
            hooks: shared.hooks.clone(),
            waiters: Waiters::new(core, shared.settings.storage_wait),
        }
    }

    /// The requests of this core waiting for their commits; the core's mail task completes
    /// them.
    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    pub(super) fn core_stats(&self) -> &CoreStats {
        &self.stats.cores[self.core]
    }

    /// The request's API key (see `presented_key`). The operator's admin token is never taken
    /// for a key, so a tenant's key next to it is not ambiguous.
    fn api_key<'a>(&self, req: &Request<'a>) -> Result<Option<&'a [u8]>, ApiError> {
        let admin = self.settings.admin_token.as_deref().map(str::as_bytes);
        let not_admin = move |v: &&[u8]| {
            let token = bearer(v).unwrap_or_default();
            !admin.is_some_and(|a| bool::from(token.ct_eq(a)))
        };
        presented_key(
            req.headers("x-api-key"),
            req.headers("authorization").filter(not_admin),
        )
    }

    /// What can be known of the request's key from its head alone, without I/O: one key,
    /// present and of an issued key's shape. Its hash is what `authenticate` looks up.
    pub(super) fn presented_key(&self, req: &Request<'_>) -> Result<Presented, ApiError> {
        let key = self
            .api_key(req)?
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::MissingApiKey)?;
        auth::check_format(key).ok_or(ApiError::InvalidApiKey)
    }

    /// The organization behind the key `admit` found in the head of a request from `peer`
    /// (`presented_key`). A key not in the cache is looked up only while its kind of unknown
    /// keys has budget left (see `UNKNOWN_KEYS_PER_PREFIX_PER_MINUTE`); one found unknown
    /// spends it.
    pub(super) async fn authenticate(
        &self,
        key: Option<Presented>,
        peer: IpAddr,
    ) -> Result<Arc<Org>, ApiError> {
        let key = key.ok_or(ApiError::MissingApiKey)?;
        if let Some(org) = self.keys.get(&key.hash) {
            return Ok(org);
        }
        // The budget this key spends if it turns out unknown: its prefix's, when an issued
        // key has that prefix; else its address's and the node's.
        let prefix = self.keys.may_be_issued(key.prefix).then_some(key.prefix);
        let address = client_bucket(peer);
        self.limits
            .unknown_key(prefix, address, false)
            .map_err(|l| ApiError::RateLimited(l.retry_after_s))?;
        auth::authenticate(&self.keys, &self.queries, key.hash)
            .await
            .map_err(|e| match e {
                AuthError::Invalid => {
                    // Refused or not, this one is counted.
                    let _ = self.limits.unknown_key(prefix, address, true);
                    ApiError::InvalidApiKey
                }
                AuthError::Query(q) => q.into(),
            })
    }

    /// `resp` holding the node's body budget for its body until it is written (see
    /// `http::budget`); 503 `overloaded` when the budget cannot cover it.
    pub(super) fn held(&self, mut resp: Response) -> Result<Response, ApiError> {
        if self.guards.budget.cover(&mut resp.lease, resp.body.len()) {
            Ok(resp)
        } else {
            Err(ApiError::Overloaded)
        }
    }

    /// Admits an operator's request: with the admin token when one is configured; without
    /// one, from a client on this host, or any client when the operator opened these routes.
    pub(super) fn require_operator(&self, req: &Request<'_>) -> Result<(), ApiError> {
        if self.settings.admin_token.is_some() {
            return self.require_admin(req);
        }
        if self.settings.operator_remote || is_this_host(req.peer) {
            Ok(())
        } else {
            Err(ApiError::OperatorOnly)
        }
    }

    /// Admits the request if no admin token is configured or it carries the token in its one
    /// `Authorization`: as a bearer token, or (from a browser) as the password of Basic
    /// credentials, any user name.
    pub(super) fn require_admin(&self, req: &Request<'_>) -> Result<(), ApiError> {
        let Some(token) = &self.settings.admin_token else {
            return Ok(());
        };
        let authorization = one(req.headers("authorization")).ok().flatten();
        let given = authorization
            .and_then(|a| bearer(a).map(<[u8]>::to_vec).or_else(|| basic_password(a)))
            .unwrap_or_default();
        if bool::from(given.as_slice().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::AdminTokenRequired)
        }
    }
}

/// Whether `peer` is a loopback address (IPv4 inside IPv6 too): a client on this host.
fn is_this_host(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// The only value of a header, `None` without one; `Err` when it is given twice.
fn one<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<&'a [u8]>, ()> {
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    Some(authorization.strip_prefix(b"Bearer ")?.trim_ascii())
}

/// The password of an `Authorization: Basic <base64(user:password)>` value.
fn basic_password(authorization: &[u8]) -> Option<Vec<u8>> {
    let encoded = authorization.strip_prefix(b"Basic ")?.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// The API key a request presents: its `X-API-Key`, else its bearer token. Two `X-API-Key`s,
/// two `Authorization`s, or a key with a different bearer token are ambiguous.
fn presented_key<'a>(
    x_api_keys: impl Iterator<Item = &'a [u8]>,
    authorizations: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a [u8]>, ApiError> {
    let key = one(x_api_keys).map_err(|()| ApiError::AmbiguousCredentials)?;
    let token = one(authorizations)
        .map_err(|()| ApiError::AmbiguousCredentials)?
        .and_then(bearer);
    match (key, token) {
        (Some(k), Some(t)) if k != t => Err(ApiError::AmbiguousCredentials),
        (Some(k), _) => Ok(Some(k)),
        (None, t) => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_is_loopback_in_either_family() {
        for (ip, here) in [
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.7", false),
            ("::ffff:192.0.2.7", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_this_host(ip.parse().unwrap()), here, "{ip}");
        }
    }

    #[test]
    fn an_ipv6_client_counts_as_its_whole_64_and_ipv4_as_its_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(other));
        assert_eq!(
            client_bucket(a),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_bucket(v4), v4);
    }

    #[test]
    fn the_key_is_x_api_key_else_the_bearer_token_and_two_different_ones_are_ambiguous() {
        let key = |k: &[&'static [u8]], a: &[&'static [u8]]| {
            presented_key(k.iter().copied(), a.iter().copied())
        };
        assert_eq!(key(&[b"k1"], &[]), Ok(Some(&b"k1"[..])));
        assert_eq!(key(&[], &[b"Bearer  tok "]), Ok(Some(&b"tok"[..])));
        assert_eq!(key(&[b"tok"], &[b"Bearer tok"]), Ok(Some(&b"tok"[..])));
        assert_eq!(key(&[], &[b"Basic dXNlcg=="]), Ok(None));
        assert_eq!(key(&[b"k1"], &[b"Basic dXNlcg=="]), Ok(Some(&b"k1"[..])));
        // An empty X-API-Key is still the key the client chose to send: refused as missing.
        assert_eq!(key(&[b""], &[]), Ok(Some(&b""[..])));
        assert_eq!(key(&[], &[]), Ok(None));
        for (keys, auths) in [
            (&[&b"k1"[..], b"k2"][..], &[][..]),
            (&[b"k1", b"k1"], &[]),
            (&[b"k1"], &[&b"Bearer k2"[..]]),
            (&[], &[b"Bearer a", b"Bearer b"]),
        ] {
            assert_eq!(key(keys, auths), Err(ApiError::AmbiguousCredentials));
        }
    }
}

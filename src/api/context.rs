//! api::context: what the handlers may use. One `Context` per core: the API's settings, the
//! rings, the query threads, the key cache, the rate limiters, the stats, and the core's own
//! waiters. Handlers get nothing else of the server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::auth::{self, AuthError, KeyCache};
use crate::db::orgs::Org;
use crate::db::QueryPool;
use crate::http::Request;
use crate::ids::OrgId;
use crate::queue::{Hub, Waiters};
use crate::ratelimit::{Limiter, Tiers};
use crate::stats::{CoreStats, Stats};

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
    /// Self-serve key generations per minute per client address.
    pub keygen_per_minute: u64,
    /// When set, key generation and the stats routes need it as a bearer token.
    pub admin_token: Option<String>,
    /// Accept webhook URLs on private, loopback and link-local addresses.
    pub webhook_allow_private: bool,
}

/// Token buckets shared by every core, so a limit holds however a client's connections spread.
#[derive(Default)]
pub struct Limits {
    /// Ingest tokens per organization, by tier.
    pub orgs: Limiter<OrgId>,
    /// Self-serve key generation per client address.
    pub keygen: Limiter<IpAddr>,
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
}

impl Shared {
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        queries: QueryPool,
        keys: Arc<KeyCache>,
        stats: Arc<Stats>,
    ) -> Shared {
        Shared {
            settings: Arc::new(settings),
            hub,
            queries,
            keys,
            stats,
            limits: Arc::default(),
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
    pub(super) waiters: Waiters,
}

impl Context {
    pub fn new(core: usize, shared: &Shared) -> Context {
        Context {
            core,
            settings: shared.settings.clone(),
            hub: shared.hub.clone(),
            queries: shared.queries.clone(),
            keys: shared.keys.clone(),
            stats: shared.stats.clone(),
            limits: shared.limits.clone(),
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

    /// The organization behind the request's key.
    pub(super) async fn authenticate(&self, req: &Request<'_>) -> Result<Arc<Org>, ApiError> {
        let key = presented_key(req.header("x-api-key"), req.header("authorization"));
        auth::authenticate(&self.keys, &self.queries, key)
            .await
            .map_err(|e| match e {
                AuthError::Missing => ApiError::MissingApiKey,
                AuthError::Invalid => ApiError::InvalidApiKey,
                AuthError::Query(q) => q.into(),
            })
    }

    /// Admits the request if no admin token is configured or it carries the token as a bearer.
    pub(super) fn require_admin(&self, req: &Request<'_>) -> Result<(), ApiError> {
        let Some(token) = &self.settings.admin_token else {
            return Ok(());
        };
        let given = bearer(req.header("authorization")).unwrap_or_default();
        if bool::from(given.ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::AdminTokenRequired)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let token = authorization?.strip_prefix(b"Bearer ")?;
    Some(token.trim_ascii())
}

/// The API key a request presents: its `X-API-Key`, else its bearer token.
fn presented_key<'a>(
    x_api_key: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    x_api_key.or_else(|| bearer(authorization))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_x_api_key_else_the_bearer_token() {
        let auth = Some(&b"Bearer  tok "[..]);
        assert_eq!(presented_key(Some(b"k1"), auth), Some(&b"k1"[..]));
        assert_eq!(presented_key(None, auth), Some(&b"tok"[..]));
        assert_eq!(presented_key(None, Some(b"Basic dXNlcg==")), None);
        // An empty X-API-Key is still the key the client chose to send: refused as missing.
        assert_eq!(presented_key(Some(b""), auth), Some(&b""[..]));
        assert_eq!(presented_key(None, None), None);
    }
}

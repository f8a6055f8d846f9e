//! config: the settings the server runs with, and the one place each is declared.
//!
//! Every setting is a flag, a `TRIGGERS_*` environment variable and a key of a TOML file, all
//! generated from one line in `keys!` below (name, type, variable, range, help). The defaults
//! live in `triggers.default.toml`, compiled in, so the file users read is the file the server
//! runs on. Precedence: flag, environment, `--config FILE`, defaults. Out-of-range values stop
//! the server at start-up with a message naming the key; nothing later re-checks them.
//!
//! `Config` hands each subsystem its own settings (`http::Limits`, `persist::BatchLimits`,
//! `api::Settings`), so a setting travels in a straight line to the one module that uses it,
//! and no module below knows this one. Imports `http`, `api`, `persist` and `ratelimit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::api::{self, AckMode};
use crate::delivery::{self, Schedule};
use crate::hooks::MemoryLimits;
use crate::http;
use crate::persist::BatchLimits;
use crate::tiers::Tiers;

pub const DEFAULTS_TOML: &str = include_str!("../triggers.default.toml");

fn required<T>(v: Option<T>, key: &str) -> anyhow::Result<T> {
    v.with_context(|| format!("config key `{key}` has no value"))
}

fn range<T: PartialOrd + std::fmt::Display>(v: T, key: &str, lo: T, hi: T) -> anyhow::Result<T> {
    if v < lo || v > hi {
        bail!("config key `{key}` = {v} is out of range {lo}..={hi}");
    }
    Ok(v)
}

macro_rules! value_type {
    (required $t:ty) => { $t };
    (optional $t:ty) => { Option<$t> };
}

macro_rules! value {
    (required $v:expr, $key:expr) => {
        required($v, $key)?
    };
    (optional $v:expr, $key:expr) => {
        $v
    };
}

/// Declares every key once: `Settings` (one layer: flags with their variables, or a file, or the
/// defaults; every key optional so layers stack) and `Values` (every required key present and
/// in range).
macro_rules! keys {
    ($(
        $(#[$attr:meta])*
        $key:ident: $ty:ty = $kind:ident, env $env:literal $(, range $lo:literal ..= $hi:literal)?;
    )*) => {
        /// One layer of settings: the command line with its environment variables, a config
        /// file, or the compiled-in defaults.
        #[derive(Clone, Debug, Default, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$attr])* #[arg(long, env = $env)] pub $key: Option<$ty>, )*
            /// Rate-limit tiers (config file only): name = events per minute, 0 = unlimited
            #[arg(skip)]
            pub tiers: Option<BTreeMap<String, u64>>,
            /// Retention by tier (config file only): name = days events are kept, 0 = forever
            #[arg(skip)]
            pub retention: Option<BTreeMap<String, u16>>,
        }

        impl Settings {
            /// Stacks `self` over `lower`: a key set here wins.
            fn over(self, lower: Settings) -> Settings {
                Settings {
                    $( $key: self.$key.or(lower.$key), )*
                    tiers: self.tiers.or(lower.tiers),
                    retention: self.retention.or(lower.retention),
                }
            }
        }

        /// Every key resolved and checked.
        struct Values {
            $( $key: value_type!($kind $ty), )*
            tiers: BTreeMap<String, u64>,
            retention: BTreeMap<String, u16>,
        }

        impl Values {
            fn check(s: Settings) -> anyhow::Result<Values> {
                Ok(Values {
                    $( $key: {
                        let v = value!($kind s.$key, stringify!($key));
                        $( let v = range(v, stringify!($key), $lo, $hi)?; )?
                        v
                    }, )*
                    tiers: required(s.tiers, "tiers")?,
                    retention: required(s.retention, "retention")?,
                })
            }
        }
    };
}

keys! {
    /// Address every core listens on [default 0.0.0.0:8090]
    listen: SocketAddr = required, env "TRIGGERS_LISTEN";
    /// Serving cores, one pinned runtime each; 0 = all CPUs
    cores: usize = required, env "TRIGGERS_CORES", range 0..=1024;
    /// Persister threads committing batches with COPY
    persisters: usize = required, env "TRIGGERS_PERSISTERS", range 1..=64;
    /// Events queued for the persisters (a batch request counts each of its events) at which a
    /// second one starts a commit of its own while the first is busy (0: at any)
    persister_help_at: usize = required, env "TRIGGERS_PERSISTER_HELP_AT", range 0..=1000000;
    /// Threads running tenants' queries off the cores, shared fairly between organizations
    query_threads: usize = required, env "TRIGGERS_QUERY_THREADS", range 1..=64;
    /// Data directory: embedded PostgreSQL cluster and lock file [default ./data]
    data_dir: PathBuf = required, env "TRIGGERS_DATA_DIR";
    /// PostgreSQL URL; without it the server runs its own cluster in the data directory.
    /// DATABASE_URL is read too
    database_url: String = optional, env "TRIGGERS_DATABASE_URL";
    /// durable: 2xx after COMMIT (default); enqueued: 2xx once queued, a crash loses the queue
    ack_mode: AckMode = required, env "TRIGGERS_ACK_MODE";
    /// Slots in each core's ring; a full ring answers 503
    ring_slots: usize = required, env "TRIGGERS_RING_SLOTS", range 16..=4194304;
    /// Rows that make a batch commit at once
    batch_rows_max: usize = required, env "TRIGGERS_BATCH_ROWS_MAX", range 1..=100000;
    /// Payload bytes that make a batch commit at once
    batch_bytes_max: usize = required, env "TRIGGERS_BATCH_BYTES_MAX", range 65536..=1073741824;
    /// Longest a batch waits for more rows after its first, in microseconds
    batch_linger_us: u64 = required, env "TRIGGERS_BATCH_LINGER_US", range 0..=1000000;
    /// Longest an event waits for its commit while PostgreSQL is unreachable, then 503
    storage_wait_ms: u64 = required, env "TRIGGERS_STORAGE_WAIT_MS", range 10..=600000;
    /// How often the embedded cluster's recently written data files are written back, in
    /// milliseconds (0: left to the kernel, which on an untuned host writes them in bursts
    /// that stall commits)
    writeback_ms: u64 = required, env "TRIGGERS_WRITEBACK_MS", range 0..=60000;
    /// Open connections per core
    connections_max: usize = required, env "TRIGGERS_CONNECTIONS_MAX", range 1..=1000000;
    /// Bytes that request and response bodies over 64 KiB may hold at once, node-wide; past
    /// it such bodies are answered 503 with Retry-After
    body_budget_bytes: usize = required, env "TRIGGERS_BODY_BUDGET_BYTES", range 8388608..=1099511627776;
    /// While the node serves its clients, the answers per second it gives, node-wide, that
    /// serve no one (no key or admin token verified, or the request refused); the rest wait
    /// their turn, at most 500 ms. 0: no pace
    pace_answers_per_s: u32 = required, env "TRIGGERS_PACE_ANSWERS_PER_S", range 0..=100000000;
    /// Time allowed for a request head once its first byte arrived
    header_timeout_ms: u64 = required, env "TRIGGERS_HEADER_TIMEOUT_MS", range 10..=600000;
    /// Time allowed for a request body
    body_timeout_ms: u64 = required, env "TRIGGERS_BODY_TIMEOUT_MS", range 10..=600000;
    /// Idle keep-alive connections close after this long
    idle_timeout_ms: u64 = required, env "TRIGGERS_IDLE_TIMEOUT_MS", range 10..=3600000;
    /// Budget for a graceful shutdown
    shutdown_timeout_ms: u64 = required, env "TRIGGERS_SHUTDOWN_TIMEOUT_MS", range 100..=600000;
    /// Accept webhook URLs on private, loopback and link-local addresses (for tests and
    /// private networks)
    webhook_allow_private: bool = required, env "TRIGGERS_WEBHOOK_ALLOW_PRIVATE";
    /// Push committed events to their organizations' webhooks
    webhook_delivery: bool = required, env "TRIGGERS_WEBHOOK_DELIVERY";
    /// Delay before each delivery attempt, the first (0s: at once) first, comma-separated
    webhook_retry_schedule: String = required, env "TRIGGERS_WEBHOOK_RETRY_SCHEDULE";
    /// Longest wait a receiver's Retry-After (on 429 or 503) may ask for, in seconds
    webhook_retry_after_max_s: u64 = required, env "TRIGGERS_WEBHOOK_RETRY_AFTER_MAX_S", range 1..=86400;
    /// Longest a delivery attempt may take: connecting, sending and reading the answer
    webhook_timeout_ms: u64 = required, env "TRIGGERS_WEBHOOK_TIMEOUT_MS", range 100..=300000;
    /// Longest a delivery attempt may take to connect
    webhook_connect_timeout_ms: u64 = required, env "TRIGGERS_WEBHOOK_CONNECT_TIMEOUT_MS", range 100..=300000;
    /// Delivery attempts in flight to one endpoint from one node
    webhook_concurrency: usize = required, env "TRIGGERS_WEBHOOK_CONCURRENCY", range 1..=1024;
    /// Deliveries a node holds in memory at once; the rest wait in the database
    webhook_memory_jobs: usize = required, env "TRIGGERS_WEBHOOK_MEMORY_JOBS", range 1..=10000000;
    /// Event bytes those deliveries may hold
    webhook_memory_bytes: usize = required, env "TRIGGERS_WEBHOOK_MEMORY_BYTES", range 1048576..=68719476736;
    /// Niceness of delivery's threads and database session (0: as ingest; 19: only spare CPU)
    webhook_nice: i32 = required, env "TRIGGERS_WEBHOOK_NICE", range 0..=19;
    /// Delivery gives way to ingest: while ingest's commits are slower than usual, attempts
    /// start at a lowered rate (see `webhook_delivery.limit_per_s` in the stats)
    webhook_yield: bool = required, env "TRIGGERS_WEBHOOK_YIELD";
    /// Keys one client address (IPv6: one /64) may create per minute through self-serve signup
    keygen_per_minute: u64 = required, env "TRIGGERS_KEYGEN_PER_MINUTE", range 1..=1000000;
    /// Highest tier self-serve signup may choose (by events per minute); any tier needs the
    /// admin token when one is set
    keygen_tier_max: String = required, env "TRIGGERS_KEYGEN_TIER_MAX";
    /// Length of a retention day, in seconds: 86400. Shorter only to watch expiry in a test or
    /// a soak: tiers' retentions shrink with it, and dedup_ids are remembered only that long
    retention_day_s: u64 = required, env "TRIGGERS_RETENTION_DAY_S", range 1..=86400;
    /// When set, key generation and the stats, metrics and dashboard routes require
    /// `Authorization: Bearer <token>`
    #[arg(hide_env_values = true)]
    admin_token: String = optional, env "TRIGGERS_ADMIN_TOKEN";
    /// Without an admin token, serve /metrics and the dashboard to clients on other hosts
    /// too (by default only to this host's)
    operator_remote: bool = required, env "TRIGGERS_OPERATOR_REMOTE";
}

/// Where the events are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A private cluster the server runs in this data directory, its data files written back
    /// this often (`cluster::writeback`; `None`: by the kernel alone).
    Embedded {
        data_dir: PathBuf,
        writeback: Option<Duration>,
    },
    /// A PostgreSQL someone else runs.
    Url(String),
}

/// The server's settings, each subsystem's in its own struct.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub cores: usize,
    pub persisters: usize,
    /// Queued events at which a helper persister joins the busy lead (see `queue::Doorbell`).
    pub persister_help_at: usize,
    pub query_threads: usize,
    pub database: Database,
    pub ring_slots: usize,
    pub batch: BatchLimits,
    pub http: http::Limits,
    pub api: api::Settings,
    /// `None`: delivery is off.
    pub delivery: Option<delivery::Settings>,
    pub memory: MemoryLimits,
    pub shutdown_timeout: Duration,
}

impl Config {
    /// What this node opens to clients it cannot tell apart, each with the setting that
    /// closes it: what the server names at start-up, so that nothing is open unsaid.
    pub fn open_surfaces(&self) -> Vec<String> {
        let api = &self.api;
        let mut open = Vec::new();
        if self.listen.ip().is_unspecified() {
            open.push(format!(
                "listening on every interface ({}; --listen 127.0.0.1:{} keeps it to this host)",
                self.listen,
                self.listen.port()
            ));
        }
        if api.admin_token.is_none() {
            open.push(format!(
                "self-serve signup for anyone, up to tier `{}`, {} a minute per address \
                 (--admin-token closes it)",
                api.keygen_tier_max.name, api.keygen_per_minute
            ));
            open.push("GET /api/queue/stats for anyone (--admin-token closes it)".into());
            if api.operator_remote {
                open.push(
                    "/metrics and /dashboard for any host (--operator-remote false keeps them \
                     to this host, --admin-token closes them)"
                        .into(),
                );
            }
        }
        if api.webhook_allow_private {
            open.push(
                "webhooks to private, loopback and link-local addresses \
                 (--webhook-allow-private false closes it)"
                    .into(),
            );
        }
        open
    }

    /// Resolves the layers: `cli` (flags and environment), the optional file, the defaults.
    pub fn load(cli: Settings, file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let defaults: Settings =
            toml::from_str(DEFAULTS_TOML).context("the compiled-in triggers.default.toml")?;
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Settings::default(),
        };
        let mut s = cli.over(from_file).over(defaults);
        if s.database_url.is_none() {
            s.database_url = std::env::var("DATABASE_URL").ok();
        }
        Config::build(Values::check(s)?)
    }

    /// Hands each checked value to the subsystem that uses it.
    fn build(v: Values) -> anyhow::Result<Config> {
        let ms = Duration::from_millis;
        let tiers = Tiers::new(v.tiers, &v.retention)
            .map_err(|e| anyhow::anyhow!("config key `tiers`: {e}"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Config {
            listen: v.listen,
            cores: if v.cores == 0 { cpus } else { v.cores },
            persisters: v.persisters,
            persister_help_at: v.persister_help_at,
            query_threads: v.query_threads,
            database: match v.database_url.filter(|u| !u.trim().is_empty()) {
                Some(url) => Database::Url(url),
                None => Database::Embedded {
                    data_dir: v.data_dir,
                    writeback: (v.writeback_ms > 0).then(|| ms(v.writeback_ms)),
                },
            },
            ring_slots: v.ring_slots,
            batch: BatchLimits {
                rows_max: v.batch_rows_max,
                bytes_max: v.batch_bytes_max,
                linger: Duration::from_micros(v.batch_linger_us),
            },
            http: http::Limits {
                header_timeout: ms(v.header_timeout_ms),
                body_timeout: ms(v.body_timeout_ms),
                idle_timeout: ms(v.idle_timeout_ms),
                connections_max: v.connections_max,
                body_budget_bytes: v.body_budget_bytes,
                pace_answers_per_s: v.pace_answers_per_s,
            },
            api: api::Settings {
                ack_mode: v.ack_mode,
                storage_wait: ms(v.storage_wait_ms),
                keygen_per_minute: v.keygen_per_minute,
                keygen_tier_max: tiers.get(&v.keygen_tier_max).cloned().with_context(|| {
                    format!(
                        "config key `keygen_tier_max` = {:?} names no tier of `tiers`",
                        v.keygen_tier_max
                    )
                })?,
                tiers,
                retention_day: Duration::from_secs(v.retention_day_s),
                admin_token: v.admin_token.filter(|t| !t.is_empty()),
                webhook_allow_private: v.webhook_allow_private,
                operator_remote: v.operator_remote,
            },
            delivery: v
                .webhook_delivery
                .then(|| -> anyhow::Result<delivery::Settings> {
                    Ok(delivery::Settings {
                        schedule: Schedule::parse(
                            &v.webhook_retry_schedule,
                            Duration::from_secs(v.webhook_retry_after_max_s),
                        )
                        .map_err(|e| anyhow::anyhow!("config key `webhook_retry_schedule`: {e}"))?,
                        timeout: ms(v.webhook_timeout_ms),
                        connect_timeout: ms(v.webhook_connect_timeout_ms),
                        concurrency: v.webhook_concurrency,
                        allow_private: v.webhook_allow_private,
                        nice: v.webhook_nice,
                        yield_to_ingest: v.webhook_yield,
                    })
                })
                .transpose()?,
            memory: MemoryLimits {
                jobs: v.webhook_memory_jobs,
                bytes: v.webhook_memory_bytes,
                lease: delivery::lease_for(ms(v.webhook_timeout_ms)),
                start_within: ms(v.webhook_timeout_ms),
            },
            shutdown_timeout: ms(v.shutdown_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_defaults_are_complete_and_valid() {
        let c = Config::load(Settings::default(), None).unwrap();
        assert_eq!(c.listen.port(), 8090);
        assert_eq!(c.api.ack_mode, AckMode::Durable);
        assert_eq!(c.api.tiers.get("free").unwrap().per_minute, Some(100));
        assert_eq!(c.api.tiers.get("unlimited").unwrap().per_minute, None);
        assert_eq!(c.batch.linger, Duration::from_micros(200));
        assert_eq!(c.api.keygen_tier_max.name, "free");
        assert_eq!(c.api.tiers.retention_days("free"), 1);
        assert_eq!(c.api.tiers.retention_days("enterprise"), 90);
        assert_eq!(c.api.retention_day, Duration::from_secs(86400));
    }

    #[test]
    fn flags_win_over_defaults_and_bad_values_name_their_key() {
        let cli = Settings {
            ring_slots: Some(3),
            ..Settings::default()
        };
        let err = Config::load(cli, None).unwrap_err().to_string();
        assert!(err.contains("ring_slots"), "{err}");
        let cli = Settings {
            persisters: Some(5),
            ..Settings::default()
        };
        assert_eq!(Config::load(cli, None).unwrap().persisters, 5);
        let cli = Settings {
            keygen_tier_max: Some("gold".into()),
            ..Settings::default()
        };
        let err = format!("{:#}", Config::load(cli, None).unwrap_err());
        assert!(err.contains("keygen_tier_max"), "{err}");
    }

    #[test]
    fn what_is_open_is_named_with_the_setting_that_closes_it() {
        let defaults = Config::load(Settings::default(), None)
            .unwrap()
            .open_surfaces();
        assert_eq!(defaults.len(), 3, "{defaults:?}");
        assert!(defaults[0].contains("every interface") && defaults[0].contains("--listen"));
        assert!(defaults[1].contains("signup") && defaults[1].contains("--admin-token"));
        assert!(defaults[2].contains("/api/queue/stats"));
        let closed = Settings {
            listen: Some("127.0.0.1:8090".parse().unwrap()),
            admin_token: Some("secret".into()),
            operator_remote: Some(true),
            ..Settings::default()
        };
        assert!(Config::load(closed, None)
            .unwrap()
            .open_surfaces()
            .is_empty());
        let opened = Settings {
            operator_remote: Some(true),
            webhook_allow_private: Some(true),
            ..Settings::default()
        };
        let open = Config::load(opened, None).unwrap().open_surfaces();
        assert!(open.iter().any(|o| o.contains("/metrics")), "{open:?}");
        assert!(
            open.iter().any(|o| o.contains("--webhook-allow-private")),
            "{open:?}"
        );
    }
}

//! config: the one `Config` the server runs with.
//!
//! Every setting is a flag, a `TRIGGERS_*` environment variable and a key of a TOML file. The
//! defaults live in `triggers.default.toml`, compiled in, so the file users read is the file the
//! server runs on. Precedence: flag, environment, `--config FILE`, defaults. `validate` rejects
//! out-of-range values at start-up with a message naming the key; nothing later re-checks them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub const DEFAULTS_TOML: &str = include_str!("../triggers.default.toml");

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

/// One layer of settings: the command line with its environment variables, a config file, or
/// the compiled-in defaults. Every field is optional so that layers can be stacked.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address every core listens on [default 0.0.0.0:8090]
    #[arg(long, env = "TRIGGERS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serving cores, one pinned runtime each; 0 = all CPUs
    #[arg(long, env = "TRIGGERS_CORES")]
    pub cores: Option<usize>,
    /// Persister threads committing batches with COPY
    #[arg(long, env = "TRIGGERS_PERSISTERS")]
    pub persisters: Option<usize>,
    /// Threads running key look-ups and other queries off the cores
    #[arg(long, env = "TRIGGERS_QUERY_THREADS")]
    pub query_threads: Option<usize>,
    /// Data directory: embedded PostgreSQL cluster and lock file [default ./data]
    #[arg(long, env = "TRIGGERS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL; without it the server runs its own cluster in the data directory.
    /// DATABASE_URL is read too
    #[arg(long, env = "TRIGGERS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// durable: 2xx after COMMIT (default); enqueued: 2xx once queued, a crash loses the queue
    #[arg(long, env = "TRIGGERS_ACK_MODE", value_enum)]
    pub ack_mode: Option<AckMode>,
    /// Slots in each core's ring; a full ring answers 503
    #[arg(long, env = "TRIGGERS_RING_SLOTS")]
    pub ring_slots: Option<usize>,
    /// Rows that make a batch commit at once
    #[arg(long, env = "TRIGGERS_BATCH_ROWS_MAX")]
    pub batch_rows_max: Option<usize>,
    /// Payload bytes that make a batch commit at once
    #[arg(long, env = "TRIGGERS_BATCH_BYTES_MAX")]
    pub batch_bytes_max: Option<usize>,
    /// Longest a batch waits for more rows after its first, in microseconds
    #[arg(long, env = "TRIGGERS_BATCH_LINGER_US")]
    pub batch_linger_us: Option<u64>,
    /// Longest an event waits for its commit while PostgreSQL is unreachable, then 503
    #[arg(long, env = "TRIGGERS_STORAGE_WAIT_MS")]
    pub storage_wait_ms: Option<u64>,
    /// Open connections per core
    #[arg(long, env = "TRIGGERS_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Time allowed for a request head once its first byte arrived
    #[arg(long, env = "TRIGGERS_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Time allowed for a request body
    #[arg(long, env = "TRIGGERS_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Idle keep-alive connections close after this long
    #[arg(long, env = "TRIGGERS_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Budget for a graceful shutdown
    #[arg(long, env = "TRIGGERS_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Accept webhook URLs on private, loopback and link-local addresses (for tests and
    /// private networks)
    #[arg(long, env = "TRIGGERS_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Keys one client address may create per minute through self-serve generation
    #[arg(long, env = "TRIGGERS_KEYGEN_PER_MINUTE")]
    pub keygen_per_minute: Option<u64>,
    /// When set, key generation and the stats routes require `Authorization: Bearer <token>`
    #[arg(long, env = "TRIGGERS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Rate-limit tiers (config file only): name = events per minute, 0 = unlimited
    #[arg(skip)]
    pub tiers: Option<BTreeMap<String, u64>>,
}

impl Settings {
    /// Stacks `self` over `lower`: a field set here wins.
    fn over(self, lower: Settings) -> Settings {
        Settings {
            listen: self.listen.or(lower.listen),
            cores: self.cores.or(lower.cores),
            persisters: self.persisters.or(lower.persisters),
            query_threads: self.query_threads.or(lower.query_threads),
            data_dir: self.data_dir.or(lower.data_dir),
            database_url: self.database_url.or(lower.database_url),
            ack_mode: self.ack_mode.or(lower.ack_mode),
            ring_slots: self.ring_slots.or(lower.ring_slots),
            batch_rows_max: self.batch_rows_max.or(lower.batch_rows_max),
            batch_bytes_max: self.batch_bytes_max.or(lower.batch_bytes_max),
            batch_linger_us: self.batch_linger_us.or(lower.batch_linger_us),
            storage_wait_ms: self.storage_wait_ms.or(lower.storage_wait_ms),
            connections_max: self.connections_max.or(lower.connections_max),
            header_timeout_ms: self.header_timeout_ms.or(lower.header_timeout_ms),
            body_timeout_ms: self.body_timeout_ms.or(lower.body_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(lower.idle_timeout_ms),
            shutdown_timeout_ms: self.shutdown_timeout_ms.or(lower.shutdown_timeout_ms),
            webhook_allow_private: self.webhook_allow_private.or(lower.webhook_allow_private),
            keygen_per_minute: self.keygen_per_minute.or(lower.keygen_per_minute),
            admin_token: self.admin_token.or(lower.admin_token),
            tiers: self.tiers.or(lower.tiers),
        }
    }
}

/// A rate-limit tier: events per minute; `None` is unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub per_minute: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub cores: usize,
    pub persisters: usize,
    pub query_threads: usize,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub ack_mode: AckMode,
    pub ring_slots: usize,
    pub batch_rows_max: usize,
    pub batch_bytes_max: usize,
    pub batch_linger: Duration,
    pub storage_wait: Duration,
    pub connections_max: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub webhook_allow_private: bool,
    pub keygen_per_minute: u64,
    pub admin_token: Option<String>,
    pub tiers: Vec<Tier>,
}

pub const DEFAULT_TIER: &str = "free";

impl Config {
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
        Config::validate(s)
    }

    fn validate(s: Settings) -> anyhow::Result<Config> {
        fn need<T>(v: Option<T>, key: &str) -> anyhow::Result<T> {
            v.with_context(|| format!("config key `{key}` has no value"))
        }
        fn range<T: PartialOrd + std::fmt::Display + Copy>(
            v: T,
            key: &str,
            lo: T,
            hi: T,
        ) -> anyhow::Result<T> {
            if v < lo || v > hi {
                bail!("config key `{key}` = {v} is out of range {lo}..={hi}");
            }
            Ok(v)
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = match range(need(s.cores, "cores")?, "cores", 0, 1024)? {
            0 => cpus,
            n => n,
        };
        let ms = |v: Option<u64>, key: &str, lo: u64, hi: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(range(need(v, key)?, key, lo, hi)?))
        };
        let tiers: Vec<Tier> = need(s.tiers, "tiers")?
            .into_iter()
            .map(|(name, per_minute)| Tier {
                name,
                per_minute: (per_minute > 0).then_some(per_minute),
            })
            .collect();
        if !tiers.iter().any(|t| t.name == DEFAULT_TIER) {
            bail!("config key `tiers` must define the default tier `{DEFAULT_TIER}`");
        }
        let database_url = s.database_url.filter(|u| !u.trim().is_empty());
        Ok(Config {
            listen: need(s.listen, "listen")?,
            cores,
            persisters: range(need(s.persisters, "persisters")?, "persisters", 1, 64)?,
            query_threads: range(
                need(s.query_threads, "query_threads")?,
                "query_threads",
                1,
                64,
            )?,
            data_dir: need(s.data_dir, "data_dir")?,
            database_url,
            ack_mode: need(s.ack_mode, "ack_mode")?,
            ring_slots: range(need(s.ring_slots, "ring_slots")?, "ring_slots", 16, 1 << 22)?,
            batch_rows_max: range(
                need(s.batch_rows_max, "batch_rows_max")?,
                "batch_rows_max",
                1,
                100_000,
            )?,
            batch_bytes_max: range(
                need(s.batch_bytes_max, "batch_bytes_max")?,
                "batch_bytes_max",
                1 << 16,
                1 << 30,
            )?,
            batch_linger: Duration::from_micros(range(
                need(s.batch_linger_us, "batch_linger_us")?,
                "batch_linger_us",
                0,
                1_000_000,
            )?),
            storage_wait: ms(s.storage_wait_ms, "storage_wait_ms", 10, 600_000)?,
            connections_max: range(
                need(s.connections_max, "connections_max")?,
                "connections_max",
                1,
                1_000_000,
            )?,
            header_timeout: ms(s.header_timeout_ms, "header_timeout_ms", 10, 600_000)?,
            body_timeout: ms(s.body_timeout_ms, "body_timeout_ms", 10, 600_000)?,
            idle_timeout: ms(s.idle_timeout_ms, "idle_timeout_ms", 10, 3_600_000)?,
            shutdown_timeout: ms(s.shutdown_timeout_ms, "shutdown_timeout_ms", 100, 600_000)?,
            webhook_allow_private: need(s.webhook_allow_private, "webhook_allow_private")?,
            keygen_per_minute: range(
                need(s.keygen_per_minute, "keygen_per_minute")?,
                "keygen_per_minute",
                1,
                1_000_000,
            )?,
            admin_token: s.admin_token.filter(|t| !t.is_empty()),
            tiers,
        })
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_defaults_are_complete_and_valid() {
        let c = Config::load(Settings::default(), None).unwrap();
        assert_eq!(c.listen.port(), 8090);
        assert_eq!(c.ack_mode, AckMode::Durable);
        assert_eq!(c.tier("free").unwrap().per_minute, Some(100));
        assert_eq!(c.tier("unlimited").unwrap().per_minute, None);
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
    }
}

//! ops: the operator's commands, on the same binary as the server. They talk to the database
//! directly (no HTTP, no admin token: whoever can reach the database, or the data directory
//! of the embedded cluster, is the operator), except `stats`, which reads a running node, and
//! `check`, which reads the host's settings.
//! Changes to an organization are announced to every node, as a key rotation is, so running
//! nodes forget what they cached of it within a second. Beside `server` on the top floor.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::api;
use crate::auth::NewKey;
use crate::cluster;
use crate::config::{Config, Database};
use crate::db::{self, orgs};
use crate::ids::{now_micros, rfc3339, OrgId};
use crate::tiers::Tiers;

/// Runs `f` on a connection to the database `config` names: its URL, or the embedded cluster
/// of its data directory (the running server's, or started for `f` when none runs).
pub fn with_db<T>(
    config: &Config,
    f: impl FnOnce(&mut postgres::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let open = |db: &postgres::Config| db::connect(db).context("connecting to PostgreSQL");
    match &config.database {
        Database::Url(url) => f(&mut open(
            &url.parse().context("parsing the database URL")?,
        )?),
        Database::Embedded { data_dir, .. } => {
            cluster::with_cluster(data_dir, |c| f(&mut open(&c.client_config())?))
        }
    }
}

fn org_id(text: &str) -> anyhow::Result<OrgId> {
    uuid::Uuid::parse_str(text)
        .map(OrgId)
        .with_context(|| format!("{text:?} is not an organization id (a UUID)"))
}

/// Creates an organization on any tier with its first key; the answer `POST
/// /api/keys/generate` gives, as JSON (the key is shown here only).
pub fn org_create(config: &Config, name: &str, tier: Option<&str>) -> anyhow::Result<Value> {
    let tier = config
        .api
        .tiers
        .find(tier.unwrap_or(Tiers::DEFAULT))
        .map_err(anyhow::Error::msg)?;
    let (org, key) = api::new_org(name, tier).map_err(anyhow::Error::msg)?;
    with_db(config, |c| Ok(orgs::create(c, &org)?))?;
    Ok(api::created(&org, &key, tier))
}

/// Every organization as a table.
pub fn org_list(config: &Config) -> anyhow::Result<String> {
    let all = with_db(config, |c| Ok(orgs::list(c)?))?;
    let rows: Vec<[String; 6]> = all
        .into_iter()
        .map(|o| {
            [
                o.id.to_string(),
                printable(&o.name),
                o.tier,
                o.active_keys.to_string(),
                o.webhook_url.map_or_else(|| "-".into(), |u| printable(&u)),
                rfc3339(o.created_at).to_string(),
            ]
        })
        .collect();
    Ok(table(
        &["organization", "name", "tier", "keys", "webhook", "created"],
        &rows,
    ))
}

/// Puts an organization on another tier (rate and retention); running nodes apply it within a
/// second. Events already stored keep the retention they arrived with.
pub fn org_set_tier(config: &Config, org: &str, tier: &str) -> anyhow::Result<String> {
    config.api.tiers.find(tier).map_err(anyhow::Error::msg)?;
    let id = org_id(org)?;
    if !with_db(config, |c| Ok(orgs::set_tier(c, id, tier)?))? {
        bail!("no organization {id}");
    }
    Ok(format!("organization {id} is on tier `{tier}`"))
}

/// An organization's keys (their shown prefixes) as a table.
pub fn keys_list(config: &Config, org: &str) -> anyhow::Result<String> {
    let id = org_id(org)?;
    let keys = with_db(config, |c| Ok(orgs::keys(c, id)?))?;
    let rows: Vec<[String; 3]> = keys
        .into_iter()
        .map(|k| {
            [
                k.prefix,
                rfc3339(k.created_at).to_string(),
                k.revoked_at
                    .map_or_else(|| "-".into(), |t| rfc3339(t).to_string()),
            ]
        })
        .collect();
    Ok(table(&["key", "created", "revoked"], &rows))
}

/// Issues an organization one more key, whatever happened to its others (a rotation whose
/// answer was lost, say), as JSON; the key is shown here only. Revoke the others with
/// `keys_revoke` once the new one is in use.
pub fn keys_create(config: &Config, org: &str) -> anyhow::Result<Value> {
    let id = org_id(org)?;
    let key = NewKey::generate();
    let at = now_micros();
    let prefix = key.shown_prefix().to_string();
    if !with_db(config, |c| {
        Ok(orgs::add_key(c, id, &key.hash, &prefix, at)?)
    })? {
        bail!("no organization {id}");
    }
    Ok(serde_json::json!({
        "api_key": key.plaintext,
        "organization_id": id.to_string(),
        "api_key_prefix": prefix,
        "created_at": rfc3339(at).to_string(),
    }))
}

/// Revokes an organization's keys whose shown prefix starts with `prefix` (all when empty);
/// running nodes refuse them within a second.
pub fn keys_revoke(config: &Config, org: &str, prefix: &str) -> anyhow::Result<String> {
    let id = org_id(org)?;
    let at = now_micros();
    let n = with_db(config, |c| Ok(orgs::revoke_keys(c, id, prefix, at)?))?;
    if n == 0 {
        bail!("organization {id} has no unrevoked key starting with {prefix:?}");
    }
    Ok(format!("revoked {n} key(s) of organization {id}"))
}

/// A running node's `/api/queue/stats`, as a table of latency percentiles and the counters an
/// operator reads first.
pub fn stats(url: &str, admin_token: Option<&str>) -> anyhow::Result<String> {
    let url = format!("{}/api/queue/stats", url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = runtime.block_on(async {
        let mut req = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(t) = admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        Ok(text)
    })?;
    let stats: Value = serde_json::from_str(&body).context("the stats are not JSON")?;
    Ok(stats_table(&stats))
}

/// The stats as text: the latency histograms by percentile (ms), then the counters.
fn stats_table(s: &Value) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |us| format!("{:.2}", us / 1000.0))
    };
    let mut rows = Vec::new();
    if let Some(latency) = s["latency_us"].as_object() {
        // Ingest's first, as the server lists them; any other after, by name.
        let first = ["ingest", "queue_wait", "commit"];
        let mut names: Vec<&String> = latency.keys().collect();
        names.sort_by_key(|n| (first.iter().position(|f| f == n).unwrap_or(first.len()), *n));
        for name in names {
            let h = &latency[name];
            rows.push([
                name.clone(),
                h["count"].as_u64().unwrap_or(0).to_string(),
                ms(&h["p50"]),
                ms(&h["p90"]),
                ms(&h["p99"]),
                ms(&h["p99_9"]),
                ms(&h["max"]),
            ]);
        }
    }
    let mut out = table(
        &["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"],
        &rows,
    );
    let _ = writeln!(out);
    let counters: Vec<[String; 2]> = [
        ("ack mode", &s["ack_mode"]),
        ("queue depth", &s["queue_depth"]),
        ("queue capacity", &s["queue_capacity"]),
        ("batches committed", &s["batches_committed"]),
        ("persisters running", &s["persisters"]["running"]),
        ("persisters connected", &s["persisters"]["connected"]),
    ]
    .into_iter()
    .chain(
        s["events"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v)),
    )
    .map(|(k, v)| {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        [k.to_string(), v]
    })
    .collect();
    out.push_str(&table(&["", "value"], &counters));
    out
}

/// `text`, chosen by a tenant, as it may reach an operator's terminal: control characters
/// (escape sequences, CR and LF that would forge lines) and the marks that reorder text
/// (bidirectional overrides) are written as `\u{..}` escapes, and so is a backslash, so that
/// an escape cannot be forged either.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || reorders || c == '\\' {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A plain text table, columns padded to their widest cell.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// One line of the host check: `ok`, `!!` (missing: counted), `..` (for information), `?`
/// (unreadable).
fn verdict(ok: Option<bool>, what: String) -> (bool, String) {
    match ok {
        Some(true) => (false, format!("  ok {what}")),
        Some(false) => (true, format!("  !! {what}")),
        None => (false, format!("  ?  {what}: unreadable")),
    }
}

/// A sysctl's value by its dotted name (`net.core.somaxconn`), as /proc/sys shows it.
pub type Sysctl = Box<dyn Fn(&str) -> Option<String>>;

/// What the host check reads, passed in so the judgement is tested with any values.
pub struct Host {
    pub sysctl: Sysctl,
    /// This process's soft limit on open files (`None`: unlimited).
    pub open_files: Option<u64>,
    /// The host's memory in bytes.
    pub mem_bytes: Option<u64>,
    /// Where the PostgreSQL server binaries are, or why they were not found.
    pub postgres: Result<std::path::PathBuf, String>,
    /// A running server's `/proc/PID/limits` and `/proc/PID/status`, when a PID was given.
    pub server: Option<(u32, String, String)>,
}

impl Host {
    /// This machine, and the server running as `pid` when one is named.
    pub fn this(pid: Option<u32>) -> anyhow::Result<Host> {
        let read = |path: &str| std::fs::read_to_string(path);
        let server = match pid {
            Some(pid) => {
                let proc = |f: &str| {
                    read(&format!("/proc/{pid}/{f}"))
                        .with_context(|| format!("no process {pid} to look at"))
                };
                Some((pid, proc("limits")?, proc("status")?))
            }
            None => None,
        };
        Ok(Host {
            sysctl: Box::new(move |name| {
                let path = format!("/proc/sys/{}", name.replace('.', "/"));
                read(&path).ok().map(|v| v.trim().to_string())
            }),
            open_files: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            mem_bytes: cluster::writeback::mem_total(),
            postgres: cluster::Binaries::locate()
                .map(|b| b.dir)
                .map_err(|e| format!("{e:#}")),
            server,
        })
    }
}

/// The host settings `tuning/` asks for, as lines, and how many are missing.
pub fn check(host: &Host) -> (String, usize) {
    let num = |name: &str| {
        (host.sysctl)(name).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let at_least = |name: &str, v: Option<u64>, want: u64| {
        let what = match v {
            Some(v) if v >= want => format!("{name} = {v}"),
            Some(v) => format!("{name} = {v}, want >= {want}"),
            None => name.to_string(),
        };
        verdict(v.map(|v| v >= want), what)
    };
    let mut lines = vec![(false, "kernel:".to_string())];
    for (name, want) in [
        ("net.core.somaxconn", 4096),
        ("net.ipv4.tcp_max_syn_backlog", 8192),
    ] {
        lines.push(at_least(name, num(name), want));
    }
    let ports: Option<Vec<u64>> = (host.sysctl)("net.ipv4.ip_local_port_range").map(|r| {
        r.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    });
    lines.push(match ports.as_deref() {
        Some([lo, hi]) if hi - lo >= 50_000 => {
            verdict(Some(true), format!("ip_local_port_range = {lo}-{hi}"))
        }
        Some([lo, hi]) => verdict(
            Some(false),
            format!("ip_local_port_range = {lo}-{hi}, want 10240-65535"),
        ),
        _ => verdict(None, "ip_local_port_range".into()),
    });
    lines.push(match num("kernel.io_uring_disabled") {
        None => (
            false,
            "  ok kernel.io_uring_disabled: no such switch on this kernel".into(),
        ),
        Some(0) => verdict(Some(true), "kernel.io_uring_disabled = 0".into()),
        Some(v) => verdict(
            Some(false),
            format!("kernel.io_uring_disabled = {v} (the server will use epoll)"),
        ),
    });
    let bg = num("vm.dirty_background_bytes").unwrap_or(0);
    lines.push(if bg > 0 && bg <= 64 << 20 {
        verdict(Some(true), format!("vm.dirty_background_bytes = {bg}"))
    } else {
        let ratio = num("vm.dirty_background_ratio").unwrap_or(10);
        let at_mb = host.mem_bytes.map_or("?".into(), |m| {
            (cluster::writeback::writeback_start(bg, ratio, m) >> 20).to_string()
        });
        verdict(
            Some(false),
            format!(
                "vm.dirty_background_bytes = {bg} (write-back starts at {ratio}% of memory, \
                 ~{at_mb} MB: commits stall behind the bursts; the server hands its embedded \
                 cluster's files to write-back itself meanwhile), want 33554432"
            ),
        )
    });
    lines.push((
        false,
        "limits of this process (a service unit sets its own):".into(),
    ));
    lines.push(match host.open_files {
        Some(n) => at_least("open files (ulimit -n, LimitNOFILE)", Some(n), 65_536),
        None => verdict(Some(true), "open files = unlimited".into()),
    });
    if let Some((pid, limits, status)) = &host.server {
        lines.push((false, format!("server {pid}:")));
        let field = |text: &str, key: &str| {
            text.lines().find(|l| l.starts_with(key)).map(|l| {
                l[key.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        let files = field(limits, "Max open files").unwrap_or_else(|| "?".into());
        let cpus = field(status, "Cpus_allowed_list:").unwrap_or_else(|| "?".into());
        lines.push((
            false,
            format!("  .. max open files (soft hard unit) = {files}"),
        ));
        lines.push((false, format!("  .. CPUs allowed = {cpus}")));
    }
    lines.push((false, "PostgreSQL server binaries:".into()));
    lines.push(match &host.postgres {
        Ok(dir) => verdict(Some(true), format!("found in {}", dir.display())),
        Err(why) => verdict(
            Some(false),
            format!("not found ({why}): apt-get install postgresql, or run with --database-url"),
        ),
    });
    let missing = lines.iter().filter(|(m, _)| *m).count();
    let mut text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    let _ = writeln!(text, "{missing} setting(s) missing");
    (text, missing)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn host(sysctls: &'static [(&'static str, &'static str)], open_files: u64) -> Host {
        Host {
            sysctl: Box::new(move |name| {
                sysctls
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }),
            open_files: Some(open_files),
            mem_bytes: Some(24 << 30),
            postgres: Ok("/usr/lib/postgresql/15/bin".into()),
            server: None,
        }
    }

    #[test]
    fn the_host_check_counts_what_is_missing_and_says_what_to_want() {
        let tuned = host(
            &[
                ("net.core.somaxconn", "4096"),
                ("net.ipv4.tcp_max_syn_backlog", "8192"),
                ("net.ipv4.ip_local_port_range", "10240\t65535"),
                ("kernel.io_uring_disabled", "0"),
                ("vm.dirty_background_bytes", "33554432"),
            ],
            65_536,
        );
        let (text, missing) = check(&tuned);
        assert_eq!(missing, 0, "{text}");
        assert!(
            text.contains("  ok ip_local_port_range = 10240-65535"),
            "{text}"
        );
        let untuned = host(
            &[
                ("net.core.somaxconn", "128"),
                ("net.ipv4.ip_local_port_range", "32768 60999"),
                ("vm.dirty_background_bytes", "0"),
                ("vm.dirty_background_ratio", "10"),
            ],
            1024,
        );
        let (text, missing) = check(&untuned);
        assert_eq!(missing, 4, "{text}");
        assert!(
            text.contains("  !! net.core.somaxconn = 128, want >= 4096"),
            "{text}"
        );
        assert!(
            text.contains("  ?  net.ipv4.tcp_max_syn_backlog: unreadable"),
            "{text}"
        );
        assert!(text.contains("~2457 MB"), "{text}");
        assert!(text.contains("no such switch"), "{text}");
        assert!(text.ends_with("4 setting(s) missing\n"), "{text}");
    }

    #[test]
    fn tenant_chosen_text_cannot_reach_the_terminal_as_control() {
        assert_eq!(printable("acme"), "acme");
        assert_eq!(
            printable("a\x1b[2Jb\r\nforged\u{202e}\\u{1b}"),
            "a\\u{1b}[2Jb\\u{d}\\u{a}forged\\u{202e}\\u{5c}u{1b}"
        );
    }

    #[test]
    fn tables_pad_columns_to_their_widest_cell() {
        let t = table(
            &["a", "long header"],
            &[["wide cell".into(), "x".into()], ["b".into(), "y".into()]],
        );
        assert_eq!(t, "a          long header\nwide cell  x\nb          y\n");
    }

    #[test]
    fn stats_show_each_histogram_in_milliseconds_and_the_counters() {
        let s = json!({
            "ack_mode": "durable", "queue_depth": 3, "queue_capacity": 100,
            "batches_committed": 7, "persisters": {"running": 2, "connected": 2},
            "events": {"accepted": 10},
            "latency_us": {"ingest": {"count": 10, "p50": 1500, "p90": 2000, "p99": 9000,
                                      "p99_9": 12000, "max": 15000}},
        });
        let t = stats_table(&s);
        assert!(
            t.contains("ingest        10     1.50  2.00  9.00  12.00  15.00"),
            "{t}"
        );
        assert!(t.contains("ack mode"), "{t}");
        assert!(t.contains("accepted"), "{t}");
    }
}

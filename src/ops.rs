//! ops: the operator's commands, on the same binary as the server. They talk to the database
//! directly (no HTTP, no admin token: whoever can reach the database, or the data directory
//! of the embedded cluster, is the operator), except `stats`, which reads a running node.
//! Changes to an organization are announced to every node, as a key rotation is, so running
//! nodes forget what they cached of it within a second. Beside `server` on the top floor.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use serde_json::{json, Value};

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

fn tier_known(tiers: &Tiers, tier: &str) -> anyhow::Result<()> {
    if tiers.get(tier).is_none() {
        let known: Vec<&str> = tiers.names().collect();
        bail!("unknown tier `{tier}`; known tiers: {}", known.join(", "));
    }
    Ok(())
}

/// Creates an organization on any tier with its first key; the answer `POST
/// /api/keys/generate` gives, as JSON (the key is shown here only).
pub fn org_create(config: &Config, name: &str, tier: Option<&str>) -> anyhow::Result<Value> {
    let tiers = &config.api.tiers;
    let tier = tier.unwrap_or(Tiers::DEFAULT);
    tier_known(tiers, tier)?;
    if name.trim().is_empty() {
        bail!("an organization needs a name");
    }
    let key = NewKey::generate();
    let days = tiers.retention_days(tier);
    let org = orgs::Org {
        id: OrgId::new(),
        name: name.to_string(),
        tier: tier.to_string(),
        key_prefix: key.shown_prefix().to_string(),
        created_at: now_micros(),
        key_hash: key.hash,
        keep_classes: vec![days as i16],
    };
    with_db(config, |c| Ok(orgs::create(c, &org)?))?;
    Ok(json!({
        "api_key": key.plaintext,
        "organization_id": org.id.to_string(),
        "organization_name": org.name,
        "tier": org.tier,
        "rate_limit_per_minute": tiers.get(tier).and_then(|t| t.per_minute),
        "retention_days": (days > 0).then_some(days),
        "created_at": rfc3339(org.created_at).to_string(),
    }))
}

/// Every organization as a table.
pub fn org_list(config: &Config) -> anyhow::Result<String> {
    let all = with_db(config, |c| Ok(orgs::list(c)?))?;
    let rows: Vec<[String; 6]> = all
        .into_iter()
        .map(|o| {
            [
                o.id.to_string(),
                o.name,
                o.tier,
                o.active_keys.to_string(),
                o.webhook_url.unwrap_or_else(|| "-".into()),
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
    tier_known(&config.api.tiers, tier)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

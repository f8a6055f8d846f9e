//! verify: after a run, read every organization's inbox back and tell what the target holds of
//! the events it acknowledged: found, found more than once, or unknown to its inbox.
//!
//! Implementations read their inbox differently: this server lists every status with
//! `status=all`; others refuse that value (422), take it for a literal status (and list
//! nothing), or list every status when none is given. So the inbox is read each way the
//! contract allows (`status=all`; no status; each status in turn) and the reading that finds
//! the most acknowledged events (then lists the most) is reported, named, beside the counts.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::client::{Conn, Target};

/// What verification found for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// Distinct event ids the target acknowledged.
    pub acknowledged: usize,
    /// Of those, listed by its inbox.
    pub found: usize,
    /// Of those found, listed more than once.
    pub found_more_than_once: usize,
    /// Events the inbox lists in all (acknowledged or not), in the reading used.
    pub inbox_events: usize,
    /// How the inbox was read: `status=all`, `no status`, or `each status`.
    pub reading: String,
}

impl Verified {
    /// Acknowledged ids the inbox does not list.
    pub fn unknown(&self) -> usize {
        self.acknowledged - self.found
    }
}

/// The ways an inbox is read, in the order tried: each a name and the `status` values read.
const READINGS: [(&str, &[Option<&str>]); 3] = [
    ("status=all", &[Some("all")]),
    ("no status", &[None]),
    (
        "each status",
        &[Some("pending"), Some("delivered"), Some("failed")],
    ),
];

/// Every event id one organization's inbox lists for `status` (`None`: the parameter left
/// out), by cursor; `None` when the target refuses the reading.
async fn listed(
    conn: &mut Conn,
    key: &str,
    status: Option<&str>,
) -> anyhow::Result<Option<Vec<String>>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/inbox?limit=1000".to_string();
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = conn.request("GET", &path, Some(key), b"").await?;
        match r.status {
            200 => {}
            400 | 404 | 422 => return Ok(None),
            s => bail!("inbox read ({path}): HTTP {s}"),
        }
        let v: Value = serde_json::from_slice(&r.body)?;
        ids.extend(
            v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_str().map(str::to_string)),
        );
        match v["next_cursor"].as_str() {
            Some(c) if v["has_more"] == true => cursor = Some(c.to_string()),
            _ => return Ok(Some(ids)),
        }
    }
}

/// What the inboxes of `keys` hold of `acked` ((organization index, id) pairs).
pub async fn verify(
    target: &Target,
    keys: &[String],
    acked: &[(usize, String)],
) -> anyhow::Result<Verified> {
    let mut conn = Conn::connect(target).await?;
    let want: HashSet<(usize, &str)> = acked.iter().map(|(o, id)| (*o, id.as_str())).collect();
    let orgs: Vec<usize> = {
        let mut orgs: Vec<usize> = want.iter().map(|(o, _)| *o).collect();
        orgs.sort_unstable();
        orgs.dedup();
        orgs
    };
    let mut best: Option<Verified> = None;
    for (name, statuses) in READINGS {
        // (organization, id) -> times listed, over this reading's statuses.
        let mut seen: HashMap<(usize, String), usize> = HashMap::new();
        let mut answered = false;
        for &org in &orgs {
            for status in statuses {
                if let Some(ids) = listed(&mut conn, &keys[org], *status).await? {
                    answered = true;
                    for id in ids {
                        *seen.entry((org, id)).or_default() += 1;
                    }
                }
            }
        }
        if !answered {
            continue;
        }
        let times = |o: usize, id: &str| seen.get(&(o, id.to_string())).copied().unwrap_or(0);
        let reading = Verified {
            acknowledged: want.len(),
            found: want.iter().filter(|(o, id)| times(*o, id) > 0).count(),
            found_more_than_once: want.iter().filter(|(o, id)| times(*o, id) > 1).count(),
            inbox_events: seen.values().sum(),
            reading: name.to_string(),
        };
        let all_found = reading.found == reading.acknowledged;
        // The reading that finds the most acknowledged events; between equals, the one that
        // lists the most (an inbox that lists events under other ids still shows them).
        let key = |v: &Verified| (v.found, v.inbox_events);
        if best.as_ref().is_none_or(|b| key(&reading) > key(b)) {
            best = Some(reading);
        }
        if all_found {
            break;
        }
    }
    best.with_context(|| format!("{}: the inbox refused every way of reading it", target.name))
}

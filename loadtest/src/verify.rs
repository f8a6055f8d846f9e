//! verify: after a run, read every organization's inbox back (all statuses, by cursor) and
//! count how many of the events the server acknowledged are stored.

use std::collections::HashSet;

use anyhow::bail;
use serde_json::Value;

use crate::client::{Conn, Target};

/// How many of `acked` ((organization index, id) pairs) the inboxes of `keys` hold: (acked,
/// stored).
pub async fn stored(
    target: &Target,
    keys: &[String],
    acked: &[(usize, String)],
) -> anyhow::Result<(usize, usize)> {
    let mut conn = Conn::connect(target).await?;
    let mut stored = 0;
    for (org, key) in keys.iter().enumerate() {
        let want: HashSet<&str> = acked
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, id)| id.as_str())
            .collect();
        if want.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/inbox?status=all&limit=1000&cursor={c}"),
                None => "/api/inbox?status=all&limit=1000".to_string(),
            };
            let r = conn.request("GET", &path, Some(key), b"").await?;
            if r.status != 200 {
                bail!("inbox read: HTTP {}", r.status);
            }
            let v: Value = serde_json::from_slice(&r.body)?;
            for e in v["events"].as_array().into_iter().flatten() {
                if let Some(id) = e["id"].as_str() {
                    seen.insert(id.to_string());
                }
            }
            match v["next_cursor"].as_str() {
                Some(c) if v["has_more"] == true => cursor = Some(c.to_string()),
                _ => break,
            }
        }
        stored += want.iter().filter(|id| seen.contains(**id)).count();
    }
    Ok((acked.len(), stored))
}

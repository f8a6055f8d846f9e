//! Retention by tier: events leave the inbox when their tier's retention has passed and the
//! database with their whole partition, dedup_ids with their events; an upgrade keeps every
//! event and dedup_id of the unpartitioned table; the upkeep runs on one node at a time.
//!
//! Each test runs on a database of its own: a short retention day (`--retention-day-s`) on the
//! shared database would drop the partitions other tests' servers write to.

use std::time::{Duration, SystemTime};

use testkit::*;

use crate::inbox_ack::{ids, inbox};
use triggers::auth::NewKey;
use triggers::db::partitions::{Upkeep, UPKEEP_LOCK_KEY};
use triggers::ids::{EventId, OrgId};

const DAY: Duration = Duration::from_secs(86_400);

fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    call(addr, "GET", "/api/queue/stats", None, "").json()
}

fn inbox_ids(addr: std::net::SocketAddr, key: &str) -> Vec<String> {
    ids(&inbox(addr, key, "?status=all&limit=1000"))
}

fn rows_of(db: &mut postgres::Client, table: &str, org: &str) -> i64 {
    let org: uuid::Uuid = org.parse().unwrap();
    db.query_one(
        &format!("SELECT count(*) FROM {table} WHERE org_id = $1"),
        &[&org],
    )
    .unwrap()
    .get(0)
}

/// A day of 4 s: `free` keeps events 4 s in partitions of 1 s, `enterprise` 6 minutes.
#[test]
fn events_leave_with_their_partitions_when_their_tiers_retention_passes() {
    let url = shared_cluster().new_database("retention");
    let server = Server::start_with(&[
        "--database-url",
        &url,
        "--retention-day-s",
        "4",
        "--webhook-delivery",
        "true",
        "--webhook-allow-private",
        "true",
    ]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let (free, free_org) = new_org_tier(server.addr, "short", "free");
    let (long, long_org) = new_org_tier(server.addr, "long", "enterprise");
    // Both push to a receiver: their attempts are kept as long as their events.
    let rx = Receiver::start();
    for key in [&free, &long] {
        let body = format!(r#"{{"webhook_url":"{}"}}"#, rx.url());
        let r = call(server.addr, "POST", "/api/webhook/config", Some(key), &body);
        assert_eq!(r.status, 200);
    }
    let keys = call(server.addr, "GET", "/api/keys", Some(&free), "").json();
    assert_eq!(keys["retention_days"], 1);
    let event = r#"{"type":"t","payload":{},"dedup_id":"once"}"#;
    let first = post_event(server.addr, &free, event);
    assert_eq!(first.status, 202);
    assert_eq!(post_event(server.addr, &long, event).status, 202);
    assert_eq!(post_event(server.addr, &free, event).status, 409);
    assert_eq!(inbox_ids(server.addr, &free).len(), 1);
    rx.wait_for(Duration::from_secs(5), "both deliveries", |g| g.len() >= 2);
    for org in [&free_org, &long_org] {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while rows_of(&mut db, "delivery_attempts", org) == 0 {
            assert!(std::time::Instant::now() < until, "no attempt recorded");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Past the retention (4 s), the partition's end (up to 1 s later) and a pass (1 s apart).
    std::thread::sleep(Duration::from_secs(7));
    assert!(inbox_ids(server.addr, &free).is_empty());
    assert_eq!(rows_of(&mut db, "events", &free_org), 0, "the row is gone");
    assert_eq!(rows_of(&mut db, "event_dedup", &free_org), 0);
    assert_eq!(
        rows_of(&mut db, "delivery_attempts", &free_org),
        0,
        "its attempts too"
    );
    let again = post_event(server.addr, &free, event);
    assert_eq!(again.status, 202, "the dedup_id left with its event");
    assert_ne!(again.json()["id"], first.json()["id"]);
    // The longer tier keeps its event, and its dedup_id.
    assert_eq!(inbox_ids(server.addr, &long).len(), 1);
    assert_eq!(rows_of(&mut db, "event_dedup", &long_org), 1);
    assert_eq!(rows_of(&mut db, "delivery_attempts", &long_org), 1);
    assert_eq!(post_event(server.addr, &long, event).status, 409);

    let s = stats(server.addr)["partitions"].clone();
    assert!(s["dropped"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["created"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    // Nothing was deleted from `events`: expired rows left with dropped tables.
    let deleted: i64 = db
        .query_one(
            "SELECT coalesce(sum(n_tup_del), 0)::int8 FROM pg_stat_user_tables
             WHERE relname LIKE 'events%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(deleted, 0);
}

/// An upgrade from an unpartitioned `events` (V4) keeps every event and dedup_id: the table
/// becomes a partition as it is, and leaves once the longest retention has passed over it.
#[test]
fn an_upgrade_keeps_every_event_and_dedup_id_of_the_unpartitioned_table() {
    let url = shared_cluster().new_database("upgrade");
    let config: postgres::Config = url.parse().unwrap();
    triggers::db::migrate_until(&config, 4).unwrap();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let (org, key) = (OrgId::new(), NewKey::generate());
    db.execute(
        "INSERT INTO organizations (org_id, name, tier) VALUES ($1, 'old', 'free')",
        &[&org],
    )
    .unwrap();
    db.execute(
        "INSERT INTO api_keys (org_id, key_hash, key_prefix) VALUES ($1, $2, 'trg_old')",
        &[&org, &&key.hash.0[..]],
    )
    .unwrap();
    let old: Vec<EventId> = (0..3).map(|_| EventId::new_v7()).collect();
    for (i, id) in old.iter().enumerate() {
        db.execute(
            "INSERT INTO events (org_id, id, type, payload, dedup_id, created_at)
             VALUES ($1, $2, 't', '{}', $3, now())",
            &[&org, id, &format!("old-{i}")],
        )
        .unwrap();
    }

    let server = Server::start_with(&["--database-url", &url]);
    let key = key.plaintext.as_str();
    let mut ids = inbox_ids(server.addr, key);
    ids.sort();
    assert_eq!(ids, old.iter().map(|i| i.to_string()).collect::<Vec<_>>());
    let dup = post_event(
        server.addr,
        key,
        r#"{"type":"t","payload":{},"dedup_id":"old-1"}"#,
    );
    assert_eq!(dup.status, 409);
    assert_eq!(dup.json()["id"], old[1].to_string());
    assert_eq!(
        post_event(server.addr, key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    assert_eq!(inbox_ids(server.addr, key).len(), 4);
    let legacy: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'events_legacy'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(legacy, 1, "the old table is a partition of events");
    drop(server);

    // 91 days on, past the longest retention (90): the old table and its dedup_ids go.
    let upkeep = Upkeep::new(&[1, 90], DAY);
    let later = SystemTime::now() + DAY * 92;
    let pass = upkeep.run(&mut db, later, true).unwrap().unwrap();
    assert!(
        pass.dropped.contains(&"events_legacy".to_string()),
        "{pass:?}"
    );
    let gone: bool = db
        .query_one("SELECT to_regclass('events_legacy') IS NULL", &[])
        .unwrap()
        .get(0);
    assert!(gone);
    let dedup: i64 = db
        .query_one("SELECT count(*) FROM event_dedup WHERE keep_days = -1", &[])
        .unwrap()
        .get(0);
    assert_eq!(dedup, 0);
}

/// Three nodes on one database run their upkeep every second: one at a time (while the lock is
/// held elsewhere, every node skips), and none fails for another's work.
#[test]
fn partition_upkeep_runs_on_one_node_at_a_time() {
    let url = shared_cluster().new_database("upkeep_nodes");
    let nodes: Vec<Server> = (0..3)
        .map(|_| Server::start_with(&["--database-url", &url, "--retention-day-s", "2"]))
        .collect();
    let (key, _) = new_org_tier(nodes[0].addr, "spread", "free");
    let passes = |nodes: &[Server]| -> (u64, u64) {
        nodes.iter().fold((0, 0), |(p, s), n| {
            let st = &stats(n.addr)["partitions"];
            assert_eq!(st["failures"], 0, "{st}");
            (
                p + st["passes"].as_u64().unwrap(),
                s + st["skipped"].as_u64().unwrap(),
            )
        })
    };
    for i in 0..30 {
        let body = format!(r#"{{"type":"t","payload":{{"n":{i}}}}}"#);
        assert_eq!(post_event(nodes[i % 3].addr, &key, &body).status, 202);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ran, _) = passes(&nodes);
    assert!(ran >= 3, "three nodes ran {ran} passes in 3 s");

    // The lock held here: no node runs a pass, every node skips.
    let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&UPKEEP_LOCK_KEY])
        .unwrap();
    let (held_from, skipped_from) = passes(&nodes);
    std::thread::sleep(Duration::from_millis(2500));
    let (held_to, skipped_to) = passes(&nodes);
    assert!(
        held_to - held_from <= 3,
        "passes ran while the lock was held elsewhere"
    );
    assert!(
        skipped_to - skipped_from >= 3,
        "{skipped_from} -> {skipped_to}"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&UPKEEP_LOCK_KEY])
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(passes(&nodes).0 > held_to, "passes resumed");
    for n in &nodes {
        assert!(!n.log_text().contains("partition upkeep failed"));
    }
}

/// A tier's retention changed by the operator applies to events that arrive after it; the
/// inbox still shows the earlier ones (it reads every class the organization's events are in).
#[test]
fn a_changed_retention_applies_to_new_events_and_the_inbox_shows_both() {
    let url = shared_cluster().new_database("retention_change");
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let first = Server::start_with(&["--database-url", &url]);
    let (key, org) = new_org_tier(first.addr, "changing", "pro");
    let event = r#"{"type":"t","payload":{}}"#;
    assert_eq!(post_event(first.addr, &key, event).status, 202);
    drop(first);

    let dir = data_dir();
    let config = dir.path().join("longer.toml");
    std::fs::write(
        &config,
        "[retention]\nfree = 1\nstarter = 7\npro = 14\nprofessional = 7\nbusiness = 30\n\
         enterprise = 90\nunlimited = 90\n",
    )
    .unwrap();
    let second =
        Server::start_with(&["--database-url", &url, "--config", config.to_str().unwrap()]);
    let keys = call(second.addr, "GET", "/api/keys", Some(&key), "").json();
    assert_eq!(keys["retention_days"], 14);
    assert_eq!(post_event(second.addr, &key, event).status, 202);
    assert_eq!(inbox_ids(second.addr, &key).len(), 2);
    let org: uuid::Uuid = org.parse().unwrap();
    let mut classes: Vec<i16> = db
        .query(
            "SELECT keep_days FROM events WHERE org_id = $1 ORDER BY keep_days",
            &[&org],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(classes, [7, 14]);
    classes = db
        .query_one(
            "SELECT keep_classes FROM organizations WHERE org_id = $1",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(classes, [7, 14]);
}

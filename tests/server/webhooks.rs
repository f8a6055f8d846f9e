//! Webhook delivery against a real receiver on loopback: what arrives and how it is signed
//! (checked with the independent `standardwebhooks` implementation), retries and their end,
//! `Retry-After`, `410 Gone`, address checks at connect time, a node killed mid-delivery, and
//! delivery giving way to ingest.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use testkit::*;

/// Delivery flags for tests: loopback receivers allowed, short attempts (leases are 4 times
/// the timeout), a short schedule.
const FAST: &[&str] = &[
    "--webhook-delivery",
    "true",
    "--webhook-allow-private",
    "true",
    "--webhook-timeout-ms",
    "3000",
    "--webhook-retry-schedule",
    "0s, 200ms, 200ms",
];

/// The `FAST` flags, less those `extra` gives again, then `extra`.
pub(crate) fn fast(extra: &[&str]) -> Vec<String> {
    FAST.chunks(2)
        .filter(|f| !extra.contains(&f[0]))
        .flatten()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

pub(crate) fn argv(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// A server with `fast(extra)` on a database of its own in the shared cluster: nodes sharing
/// a database take each other's due deliveries, and other tests' nodes are killed when their
/// tests end, leaving what they had claimed until its lease runs out.
pub(crate) fn start(extra: &[&str]) -> Server {
    on(&shared_cluster().new_database("hooks"), extra)
}

/// A server with `fast(extra)` on the database at `url`.
pub(crate) fn on(url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--database-url", url];
    let fast = fast(extra);
    args.extend(argv(&fast));
    Server::start_with(&args)
}

/// Configures `url` as the webhook of the organization of `key`; returns the secret.
pub(crate) fn configure(addr: SocketAddr, key: &str, url: &str) -> String {
    let r = call(
        addr,
        "POST",
        "/api/webhook/config",
        Some(key),
        &format!(r#"{{"webhook_url":"{url}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["secret"].as_str().unwrap().to_string()
}

pub(crate) fn post(addr: SocketAddr, key: &str, kind: &str, n: u64) -> String {
    let r = post_event(
        addr,
        key,
        &format!(r#"{{"type":"{kind}","payload":{{"n":{n}}}}}"#),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

pub(crate) fn event(addr: SocketAddr, key: &str, id: &str) -> Value {
    let page = call(
        addr,
        "GET",
        "/api/inbox?status=all&limit=1000",
        Some(key),
        "",
    )
    .json();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("event {id} not in the inbox"))
}

pub(crate) fn attempts(addr: SocketAddr, key: &str, id: &str) -> Vec<Value> {
    let r = call(
        addr,
        "GET",
        &format!("/api/events/{id}/attempts"),
        Some(key),
        "",
    );
    assert_eq!(r.status, 200);
    r.json()["attempts"].as_array().unwrap().clone()
}

/// Polls until the event's status is `status`.
pub(crate) fn wait_status(addr: SocketAddr, key: &str, id: &str, status: &str) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = event(addr, key, id);
        if e["status"] == status {
            return e;
        }
        assert!(
            std::time::Instant::now() < until && (e["status"] == "pending" || status == "pending"),
            "event {id} is {} (wanted {status}); attempts: {:?}",
            e["status"],
            attempts(addr, key, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify(secret: &str, r: &Received) {
    let wh = standardwebhooks::Webhook::new(secret).expect("a whsec_ secret");
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, r.header(name).parse().unwrap());
    }
    wh.verify(&r.body, &headers)
        .unwrap_or_else(|e| panic!("signature refused by standardwebhooks: {e:?}"));
}

#[test]
fn committed_events_arrive_once_signed_as_standard_webhooks_verify_and_are_delivered() {
    let s = start(&[]);
    let rx = Receiver::start();
    let (key, _) = new_org(s.addr, "push");
    let secret = configure(s.addr, &key, &rx.url());
    let mut ids: Vec<String> = (0..10).map(|n| post(s.addr, &key, "single", n)).collect();
    let batch = call(
        s.addr,
        "POST",
        "/api/events/batch",
        Some(&key),
        r#"{"events":[{"type":"b","payload":{"x":1},"dedup_id":"d-1"},{"type":"b","payload":{"x":2}}]}"#,
    );
    assert_eq!(batch.status, 200);
    for e in batch.json()["results"].as_array().unwrap() {
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let got = rx.wait_for(Duration::from_secs(10), "12 deliveries", |g| g.len() >= 12);
    std::thread::sleep(Duration::from_millis(300));
    let got_now = rx.received();
    assert_eq!(got_now.len(), 12, "each event exactly once");
    let mut seen = HashSet::new();
    for r in &got {
        verify(&secret, r);
        assert_eq!(r.header("content-type"), "application/json");
        let body = r.json();
        let id = body["id"].as_str().unwrap();
        assert_eq!(r.header("webhook-id"), id, "webhook-id is the event id");
        assert!(seen.insert(id.to_string()));
        let stored = event(s.addr, &key, id);
        for field in ["type", "payload", "dedup_id", "created_at"] {
            assert_eq!(body[field], stored[field], "{field}");
        }
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts) < 60);
    }
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>());
    // A tampered body fails the independent check: the test checks something.
    let mut bad = got[0].clone();
    bad.body.push(b' ');
    assert!(std::panic::catch_unwind(|| verify(&secret, &bad)).is_err());
    for id in &ids {
        let e = wait_status(s.addr, &key, id, "delivered");
        assert!(e["delivered_at"].is_string());
        let a = attempts(s.addr, &key, id);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0]["attempt"].as_i64(), a[0]["status_code"].as_i64()),
            (Some(1), Some(200))
        );
        assert_eq!(a[0]["response"], "ok");
    }
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    let d = &stats["webhook_delivery"];
    assert!(d["delivered"].as_u64().unwrap() >= 12, "{d}");
    assert_eq!(d["in_memory"], 0, "memory given back: {d}");
    assert!(
        stats["latency_us"]["delivery_end_to_end"]["count"]
            .as_u64()
            .unwrap()
            >= 12
    );
    let metrics = String::from_utf8(call(s.addr, "GET", "/metrics", None, "").body).unwrap();
    assert!(metrics.contains("triggers_deliveries_total{outcome=\"delivered\"}"));
    assert!(metrics.contains("# TYPE triggers_delivery_backlog gauge"));
    // Unknown, malformed and other organizations' events: 404.
    let (other, _) = new_org(s.addr, "other");
    for (k, path) in [
        (&other, format!("/api/events/{}/attempts", ids[0])),
        (&key, "/api/events/nope/attempts".to_string()),
    ] {
        let r = call(s.addr, "GET", &path, Some(k), "");
        assert_eq!((r.status, r.code()), (404, "event_not_found".to_string()));
    }
}

#[test]
fn failures_are_retried_on_the_schedule_then_the_event_is_failed_with_every_attempt_recorded() {
    let s = start(&[]);
    let rx = Receiver::start();
    rx.answer(|_, _| Reply::status(500));
    let (key, _) = new_org(s.addr, "failing");
    configure(s.addr, &key, &rx.url());
    let id = post(s.addr, &key, "t", 1);
    wait_status(s.addr, &key, &id, "failed");
    let got = rx.received();
    assert_eq!(got.len(), 3, "three attempts on a three-step schedule");
    assert!(got.iter().all(|r| r.header("webhook-id") == id));
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(150)),
        "{gaps:?}"
    );
    let a = attempts(s.addr, &key, &id);
    let numbers: Vec<i64> = a.iter().map(|x| x["attempt"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(a
        .iter()
        .all(|x| x["status_code"] == 500 && x["error"] == "server_error"));
    assert_eq!(a[0]["response"], "answer 500");
    let failed = call(s.addr, "GET", "/api/inbox?status=failed", Some(&key), "").json();
    assert_eq!(failed["events"][0]["id"], id);
}

#[test]
fn retry_after_on_429_sets_the_next_attempt() {
    // Without Retry-After the second attempt would come an hour later.
    let s = start(&["--webhook-retry-schedule", "0s, 1h"]);
    let rx = Receiver::start();
    rx.answer(|_, n| match n {
        0 => Reply::Status(
            429,
            vec![("retry-after".into(), "1".into())],
            "slow down".into(),
        ),
        _ => Reply::ok(),
    });
    let (key, _) = new_org(s.addr, "retry-after");
    configure(s.addr, &key, &rx.url());
    let id = post(s.addr, &key, "t", 1);
    wait_status(s.addr, &key, &id, "delivered");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
    let a = attempts(s.addr, &key, &id);
    assert_eq!(a[0]["status_code"], 429);
    assert_eq!(a[1]["status_code"], 200);
}

#[test]
fn gone_disables_the_endpoint_and_enabling_it_delivers_what_waited() {
    let s = start(&[]);
    let rx = Receiver::start();
    rx.answer(|_, _| Reply::status(410));
    let (key, _) = new_org(s.addr, "gone");
    configure(s.addr, &key, &rx.url());
    let first = post(s.addr, &key, "t", 1);
    rx.wait_for(Duration::from_secs(10), "the first attempt", |g| {
        !g.is_empty()
    });
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let config = loop {
        let c = call(s.addr, "GET", "/api/webhook/config", Some(&key), "").json();
        if c["enabled"] == false || std::time::Instant::now() > until {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(config["enabled"], false, "{config}");
    assert_eq!(config["disabled_reason"], "gone");
    // Disabled: nothing more is sent, and the event waits, pending.
    let later = post(s.addr, &key, "t", 2);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rx.received().len(), 1);
    assert_eq!(event(s.addr, &key, &first)["status"], "pending");
    // Enabled again (the receiver now takes events): what waited is delivered; events
    // committed while disabled were not queued.
    rx.answer(|_, _| Reply::ok());
    let r = call(s.addr, "POST", "/api/webhook/enable", Some(&key), "");
    assert_eq!(
        (r.status, r.json()["enabled"].clone()),
        (200, Value::Bool(true))
    );
    wait_status(s.addr, &key, &first, "delivered");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(event(s.addr, &key, &later)["status"], "pending");
    let a = attempts(s.addr, &key, &first);
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0]["status_code"].as_i64(), a[0]["error"].as_str()),
        (Some(410), Some("gone"))
    );
    // Enabling or disabling what is not configured: 404.
    let (none, _) = new_org(s.addr, "no-hook");
    let r = call(s.addr, "POST", "/api/webhook/disable", Some(&none), "");
    assert_eq!(
        (r.status, r.code()),
        (404, "webhook_not_configured".to_string())
    );
}

#[test]
fn private_addresses_are_refused_at_connect_time_and_recorded() {
    // Private targets not allowed. The URLs below cannot be configured through the API, so
    // they are written into the database as if a name had resolved there since. A cluster of
    // its own: the other tests' nodes, which allow private targets, would deliver there.
    let dir = data_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let s = Server::start_with(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--webhook-delivery",
        "true",
        "--webhook-retry-schedule",
        "0s",
    ]);
    let rx = Receiver::start();
    let port = rx.addr.port();
    let mut db = embedded_client(dir.path());
    // Every class the issue names: loopback (literal and by name), private, link-local and the
    // cloud metadata address, shared (CGNAT), unspecified, multicast, IPv6 loopback, link-local
    // and unique-local, and IPv4 inside IPv6.
    let targets = [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        "http://10.1.2.3/hook".to_string(),
        "http://172.16.0.1/hook".to_string(),
        "http://192.168.1.1/hook".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://100.64.0.1/hook".to_string(),
        "http://0.0.0.0/hook".to_string(),
        "http://224.0.0.1/hook".to_string(),
        format!("http://[::1]:{port}/hook"),
        "http://[fe80::1]/hook".to_string(),
        "http://[fd00::1]/hook".to_string(),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ];
    let mut orgs = Vec::new();
    for (i, url) in targets.iter().enumerate() {
        let (key, org) = new_org(s.addr, &format!("ssrf-{i}"));
        configure(s.addr, &key, "https://hooks.example.com/in");
        let org: uuid::Uuid = org.parse().unwrap();
        // Changed behind the server's back, and announced as every change is.
        db.batch_execute("BEGIN").unwrap();
        db.execute(
            "UPDATE organizations SET webhook_url = $2 WHERE org_id = $1",
            &[&org, url],
        )
        .unwrap();
        db.execute(
            "SELECT pg_notify('triggers_webhooks', $1)",
            &[&org.to_string()],
        )
        .unwrap();
        db.batch_execute("COMMIT").unwrap();
        orgs.push((url, key));
    }
    // Every node re-reads an endpoint when its change is announced.
    std::thread::sleep(Duration::from_millis(500));
    let posted: Vec<(&String, &String, String)> = orgs
        .iter()
        .map(|(url, key)| (*url, key, post(s.addr, key, "t", 1)))
        .collect();
    for (url, key, id) in posted {
        wait_status(s.addr, key, &id, "failed");
        let a = attempts(s.addr, key, &id);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["error"], "address_not_allowed", "{url}: {a:?}");
        assert!(a[0]["status_code"].is_null());
    }
    assert!(
        rx.received().is_empty(),
        "nothing reached the private address"
    );
}

#[test]
fn a_node_killed_mid_delivery_delivers_everything_after_restart() {
    let dir = data_dir();
    let dir_s = dir.path().to_str().unwrap().to_string();
    // A 1 s timeout: the killed node's leases run out 4 s after it took them.
    let args = |listen: &str| {
        fast(&[
            "--webhook-timeout-ms",
            "1000",
            "--data-dir",
            &dir_s,
            "--listen",
            listen,
        ])
    };
    let rx = Receiver::start();
    // Slow answers: deliveries are in flight when the node dies.
    rx.answer(|_, _| {
        std::thread::sleep(Duration::from_millis(50));
        Reply::ok()
    });
    let mut s = Server::start_with(&argv(&args("127.0.0.1:0")));
    let _reaper = Reaper(dir.path().to_path_buf());
    let (key, _) = new_org(s.addr, "killed");
    configure(s.addr, &key, &rx.url());
    let ids: Vec<String> = (0..200).map(|n| post(s.addr, &key, "t", n)).collect();
    s.kill();
    let before = rx.received().len();
    let port = s.addr.port().to_string();
    let s = Server::start_with(&argv(&args(&format!("127.0.0.1:{port}"))));
    // Leases of the killed node run out (4 × the 1 s timeout), then its rows are claimed.
    let got = rx.wait_for(Duration::from_secs(30), "every event", |g| {
        g.iter()
            .map(|r| r.header("webhook-id").to_string())
            .collect::<HashSet<_>>()
            .len()
            >= ids.len()
    });
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_id
            .entry(r.header("webhook-id").to_string())
            .or_default() += 1;
    }
    for id in &ids {
        assert!(per_id.contains_key(id), "{id} never delivered");
        wait_status(s.addr, &key, id, "delivered");
    }
    eprintln!(
        "{before} deliveries before the kill, {} after; {} events sent twice (same webhook-id)",
        got.len() - before,
        per_id.values().filter(|n| **n > 1).count()
    );
}

#[test]
fn two_nodes_on_one_database_both_deliver_and_never_the_same_event_twice() {
    let url = shared_cluster().new_database("two_nodes");
    let a = on(&url, &[]);
    let b = on(&url, &[]);
    let rx = Receiver::start();
    let (key, _) = new_org(a.addr, "two-nodes");
    configure(a.addr, &key, &rx.url());
    // Node B learns of the webhook from the database within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let ids: Vec<String> = (0..100)
        .map(|n| post(if n % 2 == 0 { a.addr } else { b.addr }, &key, "t", n))
        .collect();
    let got = rx.wait_for(Duration::from_secs(15), "100 deliveries", |g| {
        g.len() >= 100
    });
    std::thread::sleep(Duration::from_millis(500));
    let got_now = rx.received();
    assert_eq!(got_now.len(), 100, "no event delivered twice");
    let seen: HashSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
}

#[test]
fn a_graceful_stop_with_attempts_hanging_ends_in_time_and_the_next_start_delivers_them() {
    let dir = data_dir();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut args = fast(&["--data-dir", &dir_s, "--shutdown-timeout-ms", "2000"]);
    let rx = Receiver::start();
    rx.answer(|_, _| Reply::Hang(Duration::from_secs(30)));
    let mut s = Server::start_with(&argv(&args));
    let _reaper = Reaper(dir.path().to_path_buf());
    let (key, _) = new_org(s.addr, "graceful");
    configure(s.addr, &key, &rx.url());
    let ids: Vec<String> = (0..5).map(|n| post(s.addr, &key, "t", n)).collect();
    rx.wait_for(Duration::from_secs(10), "attempts in flight", |g| {
        g.len() >= 5
    });
    let stopping = std::time::Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status:?}\n{}", s.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped after {:?}",
        stopping.elapsed()
    );
    // The hanging attempts were given back: the next start delivers them at once, without
    // waiting for leases to run out.
    rx.answer(|_, _| Reply::ok());
    let before = rx.received().len();
    args.extend([
        "--listen".to_string(),
        format!("127.0.0.1:{}", s.addr.port()),
    ]);
    let s = Server::start_with(&argv(&args));
    let restarted = std::time::Instant::now();
    for id in &ids {
        wait_status(s.addr, &key, id, "delivered");
    }
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "delivered {:?} after the restart",
        restarted.elapsed()
    );
    assert!(rx.received().len() >= before + ids.len());
}

#[test]
fn redeliver_and_replay_queue_events_again_and_failed_ones_become_pending() {
    let s = start(&["--webhook-retry-schedule", "0s"]);
    let rx = Receiver::start();
    rx.answer(|_, _| Reply::status(500));
    let (key, _) = new_org(s.addr, "replay");
    configure(s.addr, &key, &rx.url());
    let since = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let ids: Vec<String> = (0..3).map(|n| post(s.addr, &key, "t", n)).collect();
    for id in &ids {
        wait_status(s.addr, &key, id, "failed");
    }
    rx.answer(|_, _| Reply::ok());
    // One event, failed: pending again, then delivered in a new round of attempts.
    let r = call(
        s.addr,
        "POST",
        &format!("/api/events/{}/redeliver", ids[0]),
        Some(&key),
        "",
    );
    assert_eq!((r.status, r.json()["queued"].as_u64()), (202, Some(1)));
    wait_status(s.addr, &key, &ids[0], "delivered");
    let a = attempts(s.addr, &key, &ids[0]);
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[1]["attempt"].as_i64(), a[1]["status_code"].as_i64()),
        (Some(1), Some(200))
    );
    // The failed ones of a time range.
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/replay",
        Some(&key),
        &format!(r#"{{"since":"{since}","status":"failed"}}"#),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (r.json()["queued"].as_u64(), r.json()["has_more"].as_bool()),
        (Some(2), Some(false))
    );
    for id in &ids[1..] {
        wait_status(s.addr, &key, id, "delivered");
    }
    // Everything since, delivered or not: all three again.
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/replay",
        Some(&key),
        &format!(r#"{{"since":"{since}"}}"#),
    );
    assert_eq!(r.json()["queued"], 3);
    let got = rx.wait_for(Duration::from_secs(10), "the replay", |g| {
        g.iter()
            .filter(|r| r.header("webhook-id") == ids[2])
            .count()
            >= 3
    });
    assert_eq!(
        got.iter()
            .filter(|r| r.header("webhook-id") == ids[1])
            .count(),
        3
    );
    // Bad input, unknown events, no webhook.
    for body in [
        r#"{"since":"yesterday"}"#,
        r#"{"since":"2026-01-01T00:00:00Z","status":"lost"}"#,
        "{}",
    ] {
        let r = call(s.addr, "POST", "/api/webhook/replay", Some(&key), body);
        assert_eq!(r.status, 400, "{body}");
    }
    let r = call(
        s.addr,
        "POST",
        &format!("/api/events/{}/redeliver", uuid::Uuid::now_v7()),
        Some(&key),
        "",
    );
    assert_eq!((r.status, r.code()), (404, "event_not_found".to_string()));
    let (none, _) = new_org(s.addr, "no-hook-replay");
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/replay",
        Some(&none),
        &format!(r#"{{"since":"{since}"}}"#),
    );
    assert_eq!(
        (r.status, r.code()),
        (404, "webhook_not_configured".to_string())
    );
}

#[test]
fn a_rotated_secret_signs_beside_the_previous_one_until_the_grace_period_ends() {
    let s = start(&[]);
    let rx = Receiver::start();
    let (key, _) = new_org(s.addr, "rotate-secret");
    let old = configure(s.addr, &key, &rx.url());
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/rotate-secret",
        Some(&key),
        r#"{"grace_seconds":2}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let new = r.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // A second rotation within the grace keeps the first one's: all three sign.
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/rotate-secret",
        Some(&key),
        r#"{"grace_seconds":2}"#,
    );
    let (middle, new) = (new, r.json()["secret"].as_str().unwrap().to_string());
    post(s.addr, &key, "t", 1);
    let got = rx.wait_for(Duration::from_secs(10), "a delivery", |g| !g.is_empty());
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 3);
    verify(&new, &got[0]);
    verify(&middle, &got[0]);
    verify(&old, &got[0]);
    // After the grace period only the new secret signs.
    std::thread::sleep(Duration::from_millis(2100));
    post(s.addr, &key, "t", 2);
    let got = rx.wait_for(Duration::from_secs(10), "a second delivery", |g| {
        g.len() >= 2
    });
    verify(&new, &got[1]);
    assert!(std::panic::catch_unwind(|| verify(&old, &got[1])).is_err());
    assert!(std::panic::catch_unwind(|| verify(&middle, &got[1])).is_err());
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/rotate-secret",
        Some(&key),
        r#"{"grace_seconds":9999999}"#,
    );
    assert_eq!(r.status, 400);
}

#[test]
fn a_hanging_endpoint_holds_only_its_own_deliveries() {
    let s = start(&["--webhook-timeout-ms", "20000"]);
    let stuck = Receiver::start();
    stuck.answer(|_, _| Reply::Hang(Duration::from_secs(30)));
    let fine = Receiver::start();
    let (k1, _) = new_org(s.addr, "stuck");
    let (k2, _) = new_org(s.addr, "fine");
    configure(s.addr, &k1, &stuck.url());
    configure(s.addr, &k2, &fine.url());
    for n in 0..100 {
        post(s.addr, &k1, "t", n);
    }
    let started = std::time::Instant::now();
    let ids: Vec<String> = (0..50).map(|n| post(s.addr, &k2, "t", n)).collect();
    fine.wait_for(Duration::from_secs(5), "the healthy endpoint's 50", |g| {
        g.len() >= 50
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        stuck.received().len() <= 8,
        "at most webhook_concurrency in flight to it"
    );
    for id in &ids {
        wait_status(s.addr, &k2, id, "delivered");
    }
}

#[test]
fn an_endpoint_that_keeps_failing_rests_without_spending_attempts_then_is_probed() {
    let s = start(&[
        "--webhook-retry-schedule",
        "0s, 200ms, 200ms, 200ms, 200ms, 200ms",
    ]);
    let rx = Receiver::start();
    rx.answer(|_, _| Reply::status(503));
    let (key, _) = new_org(s.addr, "breaker");
    configure(s.addr, &key, &rx.url());
    let ids: Vec<String> = (0..20).map(|n| post(s.addr, &key, "t", n)).collect();
    // Five failures in a row rest the endpoint for 5 s: the attempts in flight then finish,
    // and nothing more is sent.
    std::thread::sleep(Duration::from_millis(2500));
    let rested = rx.received().len();
    assert!(
        rested <= 5 + 8,
        "{rested} attempts; expected the breaker to stop them"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(rx.received().len(), rested, "resting: nothing sent");
    // The rest spends no attempt: no event has failed for good.
    let page = call(s.addr, "GET", "/api/inbox?status=failed", Some(&key), "").json();
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    // The endpoint recovers: after the rest a probe gets through, and everything follows.
    rx.answer(|_, _| Reply::ok());
    for id in &ids {
        wait_status(s.addr, &key, id, "delivered");
    }
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert!(
        stats["webhook_delivery"]["endpoints_rested"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn a_delivery_claimed_before_this_node_has_read_its_endpoint_is_delivered_once_it_has() {
    // An endpoint configured on another node reaches this node's view when the notice of it
    // arrives, but its due rows can be claimed here before that. Set up behind the API, as another node
    // would: three organizations get a webhook and a due delivery at once.
    let url = shared_cluster().new_database("stale_view");
    let s = on(&url, &[]);
    let rx = Receiver::start();
    // An endpoint the node knows already, so that it is claiming.
    let (known, _) = new_org(s.addr, "stale-known");
    configure(s.addr, &known, &rx.url());
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let (key, org) = new_org(s.addr, &format!("stale-{n}"));
        let id = post(s.addr, &key, "t", n);
        let org: uuid::Uuid = org.parse().unwrap();
        let event: uuid::Uuid = id.parse().unwrap();
        let mut tx = db.transaction().unwrap();
        tx.execute(
            "UPDATE organizations SET webhook_url = $2,
                 webhook_secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
             WHERE org_id = $1",
            &[&org, &rx.url()],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO deliveries (org_id, event_id, due_at) VALUES ($1, $2, now())",
            &[&org, &event],
        )
        .unwrap();
        tx.execute(
            "SELECT pg_notify('triggers_webhooks', $1)",
            &[&org.to_string()],
        )
        .unwrap();
        tx.commit().unwrap();
        ids.push((key, id));
    }
    for (key, id) in &ids {
        wait_status(s.addr, key, id, "delivered");
    }
    assert_eq!(rx.received().len(), 3);
}

#[test]
fn delivery_gives_way_while_ingest_commits_slowly_then_catches_up() {
    // Ingest goes on at a few hundred events a second. Then, for 1.5 s, a lock on `events`
    // holds every commit up for 60 ms of each 100: ingest's batches take far longer than
    // their floor, and the governor cuts delivery's rate. Once commits flow again the limit
    // grows back and is lifted, and every event is delivered.
    let url = shared_cluster().new_database("yield");
    let s = on(&url, &[]);
    let rx = Receiver::start();
    let (key, _) = new_org(s.addr, "yield");
    configure(s.addr, &key, &rx.url());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..4)
        .map(|t| {
            let (stop, key, addr) = (stop.clone(), key.clone(), s.addr);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    ids.push(post(addr, &key, "t", t * 1_000_000 + ids.len() as u64));
                    std::thread::sleep(Duration::from_millis(5));
                }
                ids
            })
        })
        .collect();
    let delivery = |what: &str| -> u64 {
        let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
        stats["webhook_delivery"][what].as_u64().unwrap()
    };
    // Time for the governor to see ingest's floor. (That an even ingest sets no limit is
    // the governor's unit tests' to show: beside other tests, this one's ingest is not even.)
    std::thread::sleep(Duration::from_millis(1500));
    let before = delivery("yields");
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut limited = false;
    for _ in 0..15 {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute("LOCK TABLE events IN SHARE MODE").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        tx.commit().unwrap();
        std::thread::sleep(Duration::from_millis(40));
        limited |= delivery("limit_per_s") > 0;
    }
    assert!(
        delivery("yields") > before,
        "slow commits must cut delivery's rate"
    );
    assert!(limited, "the limit shows in the stats while it holds");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ids: HashSet<String> = posters
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while delivery("limit_per_s") > 0 {
        assert!(
            std::time::Instant::now() < until,
            "the limit was never lifted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = rx.wait_for(Duration::from_secs(30), "every event", |g| {
        let seen: HashSet<&str> = g.iter().map(|r| r.header("webhook-id")).collect();
        ids.iter().all(|id| seen.contains(id.as_str()))
    });
    assert!(got.len() >= ids.len());
}

#[test]
fn a_large_batch_queues_its_deliveries_in_its_commit_and_each_arrives_once() {
    // 100 events without dedup_ids take the COPY path, with the deliveries inserted in the
    // same transaction (a small batch is one INSERT; the other test covers it). Memory for 10
    // jobs: the batch is not handed over in memory, so only its rows can bring it.
    let s = start(&["--webhook-memory-jobs", "10"]);
    let rx = Receiver::start();
    let (key, _) = new_org(s.addr, "large-batch");
    configure(s.addr, &key, &rx.url());
    let events: Vec<String> = (0..100)
        .map(|n| format!(r#"{{"type":"big","payload":{{"n":{n}}}}}"#))
        .collect();
    let r = call(
        s.addr,
        "POST",
        "/api/events/batch",
        Some(&key),
        &format!(r#"{{"events":[{}]}}"#, events.join(",")),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ids: HashSet<String> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["status"], 202, "{e}");
            e["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 100);
    rx.wait_for(Duration::from_secs(10), "100 deliveries", |g| {
        g.len() >= 100
    });
    std::thread::sleep(Duration::from_millis(300));
    let got = rx.received();
    assert_eq!(got.len(), 100, "each event exactly once");
    let seen: HashSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(seen, ids);
}

/// Outcomes are recorded with plans for the table as it is, not as it was when the store's
/// statements were first run: a generic plan made while `deliveries` was empty scans the whole
/// table for every batch once a backlog has built (found at 10,000 events/s: 61 µs per outcome).
#[test]
fn recording_outcomes_reads_only_their_rows_however_the_table_has_grown() {
    use std::time::SystemTime;
    use triggers::db::deliveries::{Next, Outcome, Recorder};
    use triggers::ids::{EventId, OrgId};

    let config: postgres::Config = shared_cluster()
        .new_database("recorder_plans")
        .parse()
        .unwrap();
    triggers::db::migrate(&config).unwrap();
    let day = triggers::db::partitions::Upkeep::new(&[1], Duration::from_secs(86_400));
    triggers::db::partitions::upkeep_at_start(&config, &day).unwrap();
    let mut store = config.connect(postgres::NoTls).unwrap();
    let mut other = config.connect(postgres::NoTls).unwrap();
    let recorder = Recorder::prepare(&mut store).unwrap();
    let org = OrgId::new();
    let lease = SystemTime::now() + Duration::from_secs(60);
    let delivered = |ids: &[EventId]| -> Vec<Outcome> {
        ids.iter()
            .map(|&id| Outcome {
                org,
                id,
                lease_until: lease,
                keep_days: 1,
                attempts: 1,
                next: Next::Delivered,
                attempt: None,
            })
            .collect()
    };
    // Batches of hundreds recorded while both tables are empty (as when a node starts), past
    // the five executions after which PostgreSQL may settle on a generic plan.
    for _ in 0..10 {
        let none: Vec<EventId> = (0..200).map(|_| EventId::new_v7()).collect();
        recorder
            .record(&mut store, &delivered(&none), SystemTime::now())
            .unwrap();
    }
    // Then a backlog, not yet analyzed (as after a burst).
    other
        .execute(
            "INSERT INTO deliveries (org_id, event_id, due_at, lease_until)
             SELECT $1, (lpad(to_hex((extract(epoch FROM now()) * 1000)::int8), 12, '0')
                         || substr(md5(g::text), 1, 20))::uuid, $2, $2
             FROM generate_series(1, 50000) g",
            &[&org, &lease],
        )
        .unwrap();
    other
        .batch_execute(
            "INSERT INTO events (org_id, id, type, payload, created_at, keep_days)
             SELECT org_id, event_id, 't', '{}', now(), 1 FROM deliveries",
        )
        .unwrap();
    let ids: Vec<EventId> = other
        .query("SELECT event_id FROM deliveries LIMIT 100", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Sequential scans of the two tables, as counted once the store's backend has reported.
    let mut scans = |store: &mut postgres::Client| -> i64 {
        store
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
        other
            .query_one(
                "SELECT coalesce(sum(seq_scan), 0)::int8 FROM pg_stat_user_tables
                 WHERE relname = 'deliveries' OR relname LIKE 'events%'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = scans(&mut store);
    recorder
        .record(&mut store, &delivered(&ids), SystemTime::now())
        .unwrap();
    assert_eq!(
        scans(&mut store),
        before,
        "a batch of outcomes scanned a table"
    );
    let left: i64 = store
        .query_one("SELECT count(*) FROM deliveries", &[])
        .unwrap()
        .get(0);
    let marked: i64 = store
        .query_one(
            "SELECT count(*) FROM events WHERE status = 'delivered'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!((left, marked), (49_900, 100));
}

#[test]
fn replays_page_exactly_redeliveries_are_metered_by_tier_and_attempts_come_in_pages() {
    let s = start(&["--webhook-retry-schedule", "0s, 100ms, 100ms"]);
    let rx = Receiver::start();
    // The first event fails all three attempts (fewer failures in a row than rest an endpoint).
    rx.answer(|r, _| match r.json()["payload"]["n"].as_u64() {
        Some(0) => Reply::status(500),
        _ => Reply::ok(),
    });
    let since = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    // Starter: 60 events a minute, for ingest and for queueing again alike.
    let (key, _) = new_org_tier(s.addr, "metered", "starter");
    configure(s.addr, &key, &rx.url());
    let ids: Vec<String> = (0..5).map(|n| post(s.addr, &key, "t", n)).collect();
    wait_status(s.addr, &key, &ids[0], "failed");
    for id in &ids[1..] {
        wait_status(s.addr, &key, id, "delivered");
    }
    // Three attempts each, in pages.
    let path = format!("/api/events/{}/attempts?limit=2", ids[0]);
    let first = call(s.addr, "GET", &path, Some(&key), "").json();
    assert_eq!(
        (
            first["attempts"].as_array().unwrap().len(),
            &first["has_more"]
        ),
        (2, &Value::Bool(true))
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = call(
        s.addr,
        "GET",
        &format!("{path}&cursor={cursor}"),
        Some(&key),
        "",
    )
    .json();
    assert_eq!(rest["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&rest["has_more"], &rest["next_cursor"]),
        (&Value::Bool(false), &Value::Null)
    );
    assert_eq!(rest["attempts"][0]["attempt"], 3);

    // A replay in pages of 2 queues each event once: no boundary event twice.
    let before = rx.received().len();
    rx.answer(|_, _| Reply::ok());
    let mut cursor: Option<String> = None;
    let mut queued = 0;
    loop {
        let body = match &cursor {
            None => format!(r#"{{"since":"{since}","limit":2}}"#),
            Some(c) => format!(r#"{{"since":"{since}","limit":2,"cursor":"{c}"}}"#),
        };
        let r = call(s.addr, "POST", "/api/webhook/replay", Some(&key), &body);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let r = r.json();
        queued += r["queued"].as_u64().unwrap();
        assert_eq!(r["in_flight"], 0);
        match r["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(queued, 5);
    for id in &ids {
        wait_status(s.addr, &key, id, "delivered");
    }
    std::thread::sleep(Duration::from_millis(300));
    let again: Vec<String> = rx.received()[before..]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(again.len(), 5, "{again:?}");
    assert_eq!(again.iter().collect::<HashSet<_>>().len(), 5);

    // Queued again past the tier's rate: 429 with a time to retry. 5 spent above; the rest of
    // the 60 go one redelivery at a time.
    let mut answers = Vec::new();
    let metering = std::time::Instant::now();
    // Only what is queued is charged: a redelivery of an event whose attempt is in flight
    // queues nothing.
    let mut charged = 0;
    for n in 0..200 {
        let r = call(
            s.addr,
            "POST",
            &format!("/api/events/{}/redeliver", ids[n % ids.len()]),
            Some(&key),
            "",
        );
        answers.push(r.status);
        if r.status == 202 {
            charged += r.json()["queued"].as_u64().unwrap();
        }
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited");
            assert!(r.header("retry-after").is_some());
            break;
        }
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(answers.last(), Some(&429), "never metered: {answers:?}");
    // One more comes back each second.
    let refilled = metering.elapsed().as_secs() as usize + 1;
    assert!(
        charged as usize <= 55 + refilled,
        "{charged} queued again of {} redeliveries before 429",
        answers.len() - 1
    );
    let r = call(
        s.addr,
        "POST",
        "/api/webhook/replay",
        Some(&key),
        &format!(r#"{{"since":"{since}"}}"#),
    );
    assert_eq!(r.status, 429);
}

#[test]
fn a_new_url_does_not_inherit_the_rest_of_the_one_it_replaces() {
    let s = start(&[]);
    let failing = Receiver::start();
    failing.answer(|_, _| Reply::status(500));
    let (key, _) = new_org(s.addr, "new-url");
    configure(s.addr, &key, &failing.url());
    // Five failures in a row: the endpoint rests (5 s, then longer).
    for n in 0..5 {
        post(s.addr, &key, "t", n);
    }
    failing.wait_for(Duration::from_secs(10), "five failures", |g| g.len() >= 5);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while call(s.addr, "GET", "/api/queue/stats", None, "").json()["webhook_delivery"]
        ["endpoints_rested"]
        == 0
    {
        assert!(
            std::time::Instant::now() < until,
            "the endpoint never rested"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new URL is another endpoint: delivered to at once.
    let healthy = Receiver::start();
    configure(s.addr, &key, &healthy.url());
    let posted = std::time::Instant::now();
    let id = post(s.addr, &key, "t", 9);
    healthy.wait_for(Duration::from_secs(10), "the new URL's delivery", |g| {
        g.iter().any(|r| r.header("webhook-id") == id)
    });
    assert!(
        posted.elapsed() < Duration::from_secs(2),
        "the new URL waited {:?}",
        posted.elapsed()
    );
}

#[test]
fn deliveries_queued_while_another_node_deleted_the_webhook_never_reach_a_later_one() {
    let url = shared_cluster().new_database("deleted_webhook");
    let (a, b) = (on(&url, &[]), on(&url, &[]));
    let first = Receiver::start();
    let (key, org) = new_org(a.addr, "deleted");
    configure(a.addr, &key, &first.url());
    // Node B ingests all along, while node A deletes the webhook.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingest = {
        let (stop, key, addr) = (stop.clone(), key.clone(), b.addr);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                post(addr, &key, "t", n);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = call(a.addr, "DELETE", "/api/webhook/config", Some(&key), "");
    assert_eq!(r.status, 204);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posted = ingest.join().unwrap();
    assert!(posted > 50, "{posted} events posted");
    // A webhook set later gets none of them: they were committed after the deletion, or
    // queued in the deleted webhook's generation.
    let later = Receiver::start();
    configure(a.addr, &key, &later.url());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        later.received().is_empty(),
        "{} arrived",
        later.received().len()
    );
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let org: uuid::Uuid = org.parse().unwrap();
    let queued: i64 = db
        .query_one("SELECT count(*) FROM deliveries WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
    // And events committed from now on are delivered there.
    let id = post(b.addr, &key, "t", 1);
    later.wait_for(Duration::from_secs(10), "a new event", |g| {
        g.iter().any(|r| r.header("webhook-id") == id)
    });
}

#[test]
fn every_attempt_of_an_event_carries_the_same_bytes_as_the_inbox_shows() {
    let s = start(&[]);
    let rx = Receiver::start();
    // The first attempt (handed over in memory from the commit) fails; the second is read back
    // from the table.
    rx.answer(|_, n| {
        if n == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let (key, _) = new_org(s.addr, "same-bytes");
    configure(s.addr, &key, &rx.url());
    // Key order, a duplicate key, numbers with exponents and scale, escapes: all of which
    // PostgreSQL's jsonb prints its own way.
    let r = post_event(
        s.addr,
        &key,
        r#"{"type":"t","payload":{"zeta":1e2,"b":[1.50,-0,0.10e1],"a":"\u00e9\/\u0001","b":"last"}}"#,
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_status(s.addr, &key, &id, "delivered");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        String::from_utf8_lossy(&got[1].body),
        "two attempts, two bodies"
    );
    let inbox = call(s.addr, "GET", "/api/inbox?status=all", Some(&key), "");
    let printed = r#""payload":{"a": "é/\u0001", "b": "last", "zeta": 100}"#;
    assert!(
        String::from_utf8_lossy(&got[0].body).contains(printed),
        "{}",
        String::from_utf8_lossy(&got[0].body)
    );
    assert!(String::from_utf8_lossy(&inbox.body).contains(printed));
}

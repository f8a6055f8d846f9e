//! Isolation of shared work: nothing one tenant or one webhook receiver does stops the others.
//! Each test plays the attacker (or the careless tenant) beside a victim tenant, on the real
//! server and a real PostgreSQL, and holds the victim's service to its bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::*;

use crate::webhooks::{attempts, configure, on, post, start, wait_status};

#[test]
fn a_receiver_answer_postgres_cannot_store_fails_no_other_tenants_deliveries() {
    let mut s = start(&["--shutdown-timeout-ms", "5000"]);
    // Two poisoned receivers: a 200 and a 500 whose bodies hold NUL, which a PostgreSQL text
    // column refuses.
    let ok_nul = Receiver::start();
    ok_nul.answer(|_, _| Reply::Status(200, Vec::new(), "ok\0ok".into()));
    let err_nul = Receiver::start();
    err_nul.answer(|_, _| Reply::Status(500, Vec::new(), "bad\0news".into()));
    let victim_rx = Receiver::start();
    let (poison_ok, _) = new_org(s.addr, "poison-ok");
    let (poison_err, _) = new_org(s.addr, "poison-err");
    let (victim, _) = new_org(s.addr, "victim");
    configure(s.addr, &poison_ok, &ok_nul.url());
    configure(s.addr, &poison_err, &err_nul.url());
    configure(s.addr, &victim, &victim_rx.url());
    let poisoned_ok = post(s.addr, &poison_ok, "t", 1);
    let poisoned_err = post(s.addr, &poison_err, "t", 1);
    ok_nul.wait_for(Duration::from_secs(10), "the poisoned answer", |g| {
        !g.is_empty()
    });
    err_nul.wait_for(Duration::from_secs(10), "the poisoned answer", |g| {
        !g.is_empty()
    });
    // The victim's events, posted after the poison is in the store's hands, are delivered
    // and marked within 2 s each.
    let ids: Vec<String> = (0..20).map(|n| post(s.addr, &victim, "v", n)).collect();
    let posted = Instant::now();
    for id in &ids {
        wait_status(s.addr, &victim, id, "delivered");
    }
    assert!(
        posted.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
        "the victim's events were marked {:?} after they were posted",
        posted.elapsed()
    );
    for id in &ids {
        assert_eq!(attempts(s.addr, &victim, id).len(), 1, "{id}");
    }
    // The poisoned tenants' own outcomes are recorded too, their answers kept with the NUL
    // replaced, and each receiver got its event once.
    wait_status(s.addr, &poison_ok, &poisoned_ok, "delivered");
    let a = attempts(s.addr, &poison_ok, &poisoned_ok);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["response"], "ok\u{fffd}ok");
    let a = attempts(s.addr, &poison_err, &poisoned_err);
    assert!(!a.is_empty() && a[0]["status_code"] == 500, "{a:?}");
    assert_eq!(a[0]["response"], "bad\u{fffd}news");
    assert_eq!(ok_nul.received().len(), 1);
    // And a stop completes within its budget.
    let stopping = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "stopped after {:?}",
        stopping.elapsed()
    );
}

#[test]
fn an_outcome_postgres_refuses_is_recorded_alone_and_fails_no_other_tenants_outcomes() {
    // What PostgreSQL refuses is not only NUL: here a rule of the database's own (a CHECK the
    // test adds) refuses one tenant's answers. That tenant's outcome is recorded on its own,
    // without the answer's text; every other outcome of its batch is recorded as it was.
    let url = shared_cluster().new_database("hooks");
    let s = on(&url, &[]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.batch_execute(
        "ALTER TABLE delivery_attempts ADD CONSTRAINT refuses_poison
         CHECK (response IS NULL OR response NOT LIKE '%poison%')",
    )
    .unwrap();
    let poison = Receiver::start();
    poison.answer(|_, _| Reply::Status(200, Vec::new(), "poison".into()));
    let victim_rx = Receiver::start();
    let (poison_key, _) = new_org(s.addr, "refused");
    let (victim, _) = new_org(s.addr, "victim");
    configure(s.addr, &poison_key, &poison.url());
    configure(s.addr, &victim, &victim_rx.url());
    // Interleaved, so that outcomes of both share batches.
    let mut ids = Vec::new();
    let mut poisoned = Vec::new();
    for n in 0..20 {
        poisoned.push(post(s.addr, &poison_key, "p", n));
        ids.push(post(s.addr, &victim, "v", n));
    }
    for id in &ids {
        wait_status(s.addr, &victim, id, "delivered");
        let a = attempts(s.addr, &victim, id);
        assert_eq!((a.len(), &a[0]["response"]), (1, &"ok".into()), "{a:?}");
    }
    for id in &poisoned {
        wait_status(s.addr, &poison_key, id, "delivered");
        let a = attempts(s.addr, &poison_key, id);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (&a[0]["status_code"], &a[0]["error"], &a[0]["response"]),
            (
                &200.into(),
                &"unstorable_answer".into(),
                &serde_json::Value::Null
            ),
        );
    }
    assert_eq!(poison.received().len(), 20, "each poisoned event sent once");
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert_eq!(stats["webhook_delivery"]["unstorable_outcomes"], 20);
}

/// A payload of `bytes` bytes of random hex: PostgreSQL cannot compress it away.
fn incompressible_event(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes / 2];
    getrandom::fill(&mut raw).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!(r#"{{"type":"big","payload":{{"x":"{hex}"}}}}"#)
}

/// `n` threads each asking `path` with `key` over and over until `stop`: how many answers of
/// each status they got.
fn hammer(
    addr: std::net::SocketAddr,
    n: usize,
    key: &str,
    path: &'static str,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<HashMap<u16, u64>>> {
    (0..n)
        .map(|_| {
            let (key, stop) = (key.to_string(), stop.clone());
            std::thread::spawn(move || {
                let mut got: HashMap<u16, u64> = HashMap::new();
                let mut c = Client::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let status = match c.request("GET", path, &[("X-API-Key", &key)], b"") {
                        Ok(r) => r.status,
                        Err(_) => {
                            c = Client::connect(addr).unwrap();
                            0
                        }
                    };
                    *got.entry(status).or_default() += 1;
                    if status != 200 {
                        // Refused at once: the attack's own CPU would otherwise starve this
                        // 2-core test machine, which is not what this test is about.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                got
            })
        })
        .collect()
}

/// The `q`-quantile of `samples`.
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn one_tenants_inbox_reads_hold_up_no_other_tenants_reads_nor_health() {
    let s = Server::start(&[]);
    let (hog, _) = new_org(s.addr, "hog");
    let (victim, _) = new_org(s.addr, "victim");
    // A tier with a rate limit: its ingest leases tokens on the query threads' side.
    let (limited, _) = new_org_tier(s.addr, "limited", "business");
    // What a free tenant can store in a minute: 100 events of 200 KB.
    let big = incompressible_event(200_000);
    for _ in 0..100 {
        assert_eq!(post_event(s.addr, &hog, &big).status, 202);
    }
    post_numbered(s.addr, &victim, 10, Duration::ZERO);
    // 100 connections reading the deepest page there is, and 20 reading whole pages of it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut hogs = hammer(
        s.addr,
        100,
        &hog,
        "/api/inbox?status=all&offset=99&limit=1",
        &stop,
    );
    hogs.extend(hammer(
        s.addr,
        20,
        &hog,
        "/api/inbox?status=all&limit=1000",
        &stop,
    ));
    std::thread::sleep(Duration::from_secs(1));
    let (mut inbox, mut health, mut ingest) = (Vec::new(), Vec::new(), Vec::new());
    let mut c = Client::connect(s.addr).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let started = Instant::now();
        let r = c
            .request("GET", "/api/inbox?limit=10", &[("X-API-Key", &victim)], b"")
            .unwrap();
        inbox.push(started.elapsed());
        assert_eq!(
            (r.status, r.json()["events"].as_array().unwrap().len()),
            (200, 10)
        );
        let started = Instant::now();
        let r = c.request("GET", "/health", &[], b"").unwrap();
        health.push(started.elapsed());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let started = Instant::now();
        let r = c
            .request(
                "POST",
                "/api/events",
                &[("X-API-Key", &limited)],
                br#"{"type":"t","payload":{}}"#,
            )
            .unwrap();
        ingest.push(started.elapsed());
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut hog_answers: HashMap<u16, u64> = HashMap::new();
    for h in hogs {
        for (status, n) in h.join().unwrap() {
            *hog_answers.entry(status).or_default() += n;
        }
    }
    // The hog was served too, and what it was refused was refused as overload, not as
    // storage's failure.
    assert!(
        hog_answers.get(&200).copied().unwrap_or(0) > 0,
        "{hog_answers:?}"
    );
    assert!(
        hog_answers.keys().all(|s| [200, 503].contains(s)),
        "{hog_answers:?}"
    );
    let (inbox_p99, health_p99, ingest_p99) = (
        quantile(&mut inbox, 0.99),
        quantile(&mut health, 0.99),
        quantile(&mut ingest, 0.99),
    );
    eprintln!(
        "victim under the query hog: inbox p99 {inbox_p99:?} ({} reads), health p99 \
         {health_p99:?}, rate-limited ingest p99 {ingest_p99:?}; hog answers {hog_answers:?}",
        inbox.len()
    );
    // The target is 100 ms (loadtest hostile measures it); on this shared 2-core machine, with
    // 120 attacking connections on the same CPUs, the test holds a looser bound.
    assert!(
        inbox_p99 < Duration::from_millis(300),
        "inbox p99 {inbox_p99:?}"
    );
    assert!(
        health_p99 < Duration::from_millis(300),
        "health p99 {health_p99:?}"
    );
}

#[test]
fn unknown_keys_from_the_address_every_client_shares_lock_no_uncached_tenant_out() {
    // Every client here comes from 127.0.0.1, as every client does behind a load balancer.
    let db = shared_cluster().new_database("keys");
    let first = Server::start_with(&["--database-url", &db]);
    let keys: Vec<String> = (0..40)
        .map(|i| new_org(first.addr, &format!("uncached-{i}")).0)
        .collect();
    // A restart: no key is cached.
    drop(first);
    let s = Server::start_with(&["--database-url", &db]);
    // The attacker presents 20 well-formed keys a second that were never issued.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, addr) = (stop.clone(), s.addr);
        std::thread::spawn(move || {
            let mut answers: HashMap<u16, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let guess = triggers::auth::NewKey::generate().plaintext;
                let r = post_event(addr, &guess, r#"{"type":"t","payload":{}}"#);
                *answers.entry(r.status).or_default() += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            answers
        })
    };
    // Past the 60 unknown keys a minute one address may present.
    std::thread::sleep(Duration::from_secs(4));
    for (i, key) in keys.iter().enumerate() {
        let r = post_event(s.addr, key, r#"{"type":"t","payload":{}}"#);
        assert_eq!(
            r.status,
            202,
            "tenant {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let answers = attacker.join().unwrap();
    // And the guard still holds against the guesses.
    assert!(
        answers.get(&429).copied().unwrap_or(0) > 0
            && answers.keys().all(|s| [401, 429].contains(s)),
        "{answers:?}"
    );
}

#[test]
fn a_key_rotation_answered_503_never_takes_effect_later() {
    let url = shared_cluster().new_database("rotate");
    let s = Server::start_with(&["--database-url", &url]);
    let (key, org) = new_org(s.addr, "rotating");
    // Another session holds the organization's row (an operator's command, another node's
    // rotation) for longer than the rotation may take.
    let held = Duration::from_secs(12);
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = db.transaction().unwrap();
        let org: uuid::Uuid = org.parse().unwrap();
        tx.execute(
            "SELECT 1 FROM organizations WHERE org_id = $1 FOR UPDATE",
            &[&org],
        )
        .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(held);
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    let asked = Instant::now();
    let r = call(s.addr, "POST", "/api/keys/rotate", Some(&key), "");
    // Answered before the lock is let go: refused.
    assert!(
        asked.elapsed() < held,
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    holder.join().unwrap();
    // The lock is gone: a rotation that had waited for it would commit now. The old key
    // keeps working.
    let event = r#"{"type":"t","payload":{}}"#;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let r = post_event(s.addr, &key, event);
        assert_eq!(r.status, 202, "the rotation answered 503 took effect later");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(call(s.addr, "GET", "/api/keys", Some(&key), "").status, 200);
    // And it was refused as the caller's to retry, not as storage's failure.
    assert_eq!(r.code(), "overloaded");
}

#[test]
fn operator_routes_answer_only_this_host_unless_opened_and_start_up_names_what_is_open() {
    let Some(other) = other_address() else {
        panic!("this host has no address but loopback: the test needs one to play another host");
    };
    let s = Server::start_with(&[
        "--database-url",
        &shared_cluster().url,
        "--listen",
        "0.0.0.0:0",
    ]);
    let remote = std::net::SocketAddr::new(other, s.addr.port());
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], s.addr.port()));
    for path in ["/metrics", "/dashboard", "/dashboard/data"] {
        assert_eq!(
            call(local, "GET", path, None, "").status,
            200,
            "{path} from this host"
        );
        let r = call(remote, "GET", path, None, "");
        assert_eq!(
            (r.status, r.code()),
            (403, "operator_only".into()),
            "{path}"
        );
    }
    // The contract's routes stay open.
    assert_eq!(
        call(remote, "GET", "/api/queue/stats", None, "").status,
        200
    );
    assert_eq!(call(remote, "GET", "/health", None, "").status, 200);
    // Start-up said what is open, and how to close it.
    let log = s.log_text();
    let open = log
        .lines()
        .find(|l| l.contains("open:"))
        .expect("the open surfaces named");
    for named in [
        "every interface",
        "--listen",
        "signup",
        "--admin-token",
        "/api/queue/stats",
    ] {
        assert!(open.contains(named), "{named}: {open}");
    }
    // Opened by the operator: every host; with an admin token: whoever has it.
    let opened = Server::start_with(&[
        "--database-url",
        &shared_cluster().url,
        "--listen",
        "0.0.0.0:0",
        "--operator-remote",
        "true",
    ]);
    let remote = std::net::SocketAddr::new(other, opened.addr.port());
    assert_eq!(call(remote, "GET", "/metrics", None, "").status, 200);
    let guarded = Server::start_with(&[
        "--database-url",
        &shared_cluster().url,
        "--listen",
        "0.0.0.0:0",
        "--admin-token",
        "s3cret",
    ]);
    let remote = std::net::SocketAddr::new(other, guarded.addr.port());
    assert_eq!(call(remote, "GET", "/metrics", None, "").status, 401);
    let mut c = Client::connect(remote).unwrap();
    let r = c
        .request(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer s3cret")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!guarded.log_text().contains("signup for anyone"));
}

#[test]
fn polling_the_operators_figures_as_fast_as_possible_renders_them_at_most_20_times_a_second() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr).unwrap();
    let (mut fresh, mut kept) = (0, 0);
    let started = Instant::now();
    for _ in 0..1500 {
        let r = c.request("GET", "/api/queue/stats", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        match r.header("age") {
            Some(_) => kept += 1,
            None => fresh += 1,
        }
    }
    let took = started.elapsed().as_secs_f64();
    // A burst of 1,200, then 20 a second.
    let allowed = 1200.0 + 20.0 * took + 1.0;
    assert!(
        kept > 0 && (fresh as f64) <= allowed,
        "{fresh} fresh, {kept} kept in {took:.2} s"
    );
}

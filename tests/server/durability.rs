//! Nothing answered 2xx is lost: not by a graceful shutdown under load, not by `kill -9` at
//! random moments, not by PostgreSQL going away; and an event answered 503 is never stored later.
//!
//! The crash test runs `CRASH_CYCLES` kill cycles (default 3; `tests/crash.sh` runs 50): the
//! server, its postmaster, or both, by turns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::*;
use uuid::Uuid;

/// What clients were told, by dedup_id: the id of the stored event (from a 202, or from a 409
/// for a retry whose first attempt had in fact committed).
pub(crate) type Acked = Arc<Mutex<HashMap<String, Uuid>>>;

/// Posts events on `clients` keep-alive connections until `stop`, each with a unique dedup_id
/// while `dedup` is set (the server's ON CONFLICT path) and without one otherwise (its plain
/// COPY path, used only by batches with no dedup_id at all). A request with a dedup_id whose
/// connection breaks is retried with the same dedup_id, as a careful client does, against
/// whatever `addr` holds by then; one without is sent anew. Acknowledged events are keyed by
/// dedup_id, or by `id:<id>` for those without.
pub(crate) fn load(
    addr: Arc<Mutex<SocketAddr>>,
    key: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
    tag: &'static str,
    dedup: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    (0..clients)
        .map(|_| {
            let (addr, key, stop, acked) = (addr.clone(), key.clone(), stop.clone(), acked.clone());
            let dedup_mode = dedup.clone();
            std::thread::spawn(move || {
                let mut conn: Option<Client> = None;
                let mut pending: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let dedup = pending.take().unwrap_or_else(|| {
                        format!("{tag}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
                    });
                    if conn.is_none() {
                        conn = Client::connect(*addr.lock().unwrap()).ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        pending = Some(dedup);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let with_dedup = dedup_mode.load(Ordering::Relaxed);
                    let body = if with_dedup {
                        format!(
                            r#"{{"type":"load.test","payload":{{"d":"{dedup}"}},"dedup_id":"{dedup}"}}"#
                        )
                    } else {
                        format!(r#"{{"type":"load.test","payload":{{"d":"{dedup}"}}}}"#)
                    };
                    match c.request(
                        "POST",
                        "/api/events",
                        &[("X-API-Key", &key)],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 202 || r.status == 409 => {
                            let id: Uuid = r.json()["id"].as_str().unwrap().parse().unwrap();
                            let key = if with_dedup { dedup } else { format!("id:{id}") };
                            acked.lock().unwrap().insert(key, id);
                        }
                        Ok(r) if r.status == 503 => {
                            pending = Some(dedup);
                            if r.header("connection") == Some("close") {
                                conn = None;
                            }
                        }
                        Ok(r) => panic!(
                            "unexpected {} {:?}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ),
                        Err(_) => {
                            pending = Some(dedup);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Acknowledged events not stored under the id the client was given, and dedup_ids stored
/// more than once.
pub(crate) fn lost_and_duplicated(
    db: &mut postgres::Client,
    org: &str,
    acked: &HashMap<String, Uuid>,
) -> (usize, usize) {
    let org: Uuid = org.parse().unwrap();
    let rows = db
        .query("SELECT dedup_id, id FROM events WHERE org_id = $1", &[&org])
        .unwrap();
    // Keyed as `acked` is: by dedup_id, or `id:<id>` for events without one.
    let mut stored: HashMap<String, Vec<Uuid>> = HashMap::new();
    for r in rows {
        let id: Uuid = r.get(1);
        let key = r
            .get::<_, Option<String>>(0)
            .unwrap_or_else(|| format!("id:{id}"));
        stored.entry(key).or_default().push(id);
    }
    let lost = acked
        .iter()
        .filter(|(k, id)| stored.get(*k).is_none_or(|ids| !ids.contains(id)))
        .count();
    let duplicated = stored.values().filter(|ids| ids.len() > 1).count();
    (lost, duplicated)
}

/// Posts under load, sends SIGTERM, and checks the exit and that every 2xx is stored.
fn shutdown_under_load_loses_nothing(extra: &[&str], tag: &'static str, dedup: bool) {
    let mut s = Server::start(extra);
    let (key, org) = new_org(s.addr, tag);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let addr = Arc::new(Mutex::new(s.addr));
    let mode = Arc::new(AtomicBool::new(dedup));
    let threads = load(addr, key, 8, stop.clone(), acked.clone(), tag, mode);
    std::thread::sleep(Duration::from_millis(600));
    let status = s.terminate();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(status.success(), "exit {status:?}\n{}", s.log_text());
    assert!(s.log_text().contains("shutdown complete"));
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 50, "only {} events acknowledged", acked.len());
    let counts = lost_and_duplicated(&mut shared_cluster().client(), &org, &acked);
    assert_eq!(counts, (0, 0));
}

#[test]
fn graceful_shutdown_under_load_loses_nothing_answered_2xx() {
    shutdown_under_load_loses_nothing(&[], "graceful", false);
}

#[test]
fn enqueued_mode_commits_every_queued_event_on_graceful_shutdown() {
    shutdown_under_load_loses_nothing(&["--ack-mode", "enqueued"], "enqueued", true);
}

/// The embedded cluster's postmaster, once one runs (a restart may be under way).
/// GNU `timeout` signals the server and then its process group a fraction of a millisecond
/// apart: one request to stop, so the stop is graceful and the embedded cluster is stopped too.
#[test]
fn a_stop_by_gnu_timeout_is_graceful_and_stops_the_embedded_cluster() {
    let data = data_dir();
    let out = std::process::Command::new("timeout")
        .args(["--preserve-status", "-s", "TERM", "6"])
        .arg(server_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("TRIGGERS_LOG", "info")
        .env_remove("DATABASE_URL")
        .output()
        .expect("running the server under timeout");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("listening"), "{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        !data.path().join("postgres/postmaster.pid").exists(),
        "the embedded PostgreSQL was left running\n{log}"
    );
}

/// A second signal within a second of the first (the process, then its group) is the same
/// stop; one sent later exits at once, as it always did.
#[test]
fn a_repeated_signal_within_a_second_is_the_same_graceful_stop() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let data = data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut s = Server::start_with(&["--data-dir", &dir]);
    let pid = Pid::from_raw(s.pid());
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let status = s.terminate();
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("repeated signal: already stopping"));
    assert!(s.log_text().contains("shutdown complete"));
    assert!(!data.path().join("postgres/postmaster.pid").exists());
}

/// As root, the embedded PostgreSQL runs as `postgres`: a data directory under a directory it
/// cannot enter (root's home, 0700) is refused at once with the two ways out, and the first of
/// them (`chmod o+x`) works.
#[test]
fn as_root_a_data_directory_postgres_cannot_reach_is_refused_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let top = data_dir();
    let home = top.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = home.join("data");
    let out = std::process::Command::new(server_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let chmod = format!("chmod o+x {}", home.display());
    assert!(err.contains(&chmod), "{err}");
    assert!(err.contains("--data-dir /var/lib/triggers"), "{err}");

    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o701)).unwrap();
    let dir = data.to_str().unwrap().to_string();
    let mut s = Server::start_with(&["--data-dir", &dir]);
    let (key, _) = new_org(s.addr, "root-home");
    assert_eq!(
        post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    assert!(s.terminate().success());
}

fn postmaster_pid(data_dir: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok());
        match pid {
            Some(pid) => return pid,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("no postmaster started in {}", data_dir.display()),
        }
    }
}

fn kill_postmaster(data_dir: &std::path::Path) -> i32 {
    let pid = postmaster_pid(data_dir);
    // It may be gone already (a start that failed); the test goes on either way.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    pid
}

/// Polls `what` every 50 ms until it holds, for at most `within`.
pub(crate) fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_embedded_postgres_is_reaped_and_restarted_and_only_a_lost_one_fails_liveness() {
    let data = data_dir();
    let _reaper = Reaper(data.path().to_path_buf());
    let dir = data.path().to_str().unwrap().to_string();
    let server = Server::start_with(&["--data-dir", &dir, "--storage-wait-ms", "1000"]);
    let (key, _) = new_org(server.addr, "supervised");
    let ingest = || post_event(server.addr, &key, r#"{"type":"t","payload":{}}"#).status;
    let live = || call(server.addr, "GET", "/health/live", None, "").status;
    assert_eq!(ingest(), 202);

    let restarts = || {
        call(server.addr, "GET", "/api/queue/stats", None, "").json()["embedded_postgres"]
            ["restarts"]
            .as_u64()
            .unwrap()
    };
    let first = kill_postmaster(data.path());
    // Until the new postmaster runs (a backend of the killed one may still commit for a
    // moment), an event is stored or refused as storage_unavailable, nothing else.
    eventually(Duration::from_secs(60), "a new postmaster runs", || {
        let status = ingest();
        assert!(matches!(status, 202 | 503), "{status}");
        assert_eq!(live(), 200, "an outage the node rides out keeps it live");
        restarts() == 1
    });
    eventually(Duration::from_secs(30), "ingest works again", || {
        ingest() == 202
    });
    assert_ne!(first, postmaster_pid(data.path()));
    // Reaped: no zombie of the killed postmaster is left behind.
    assert!(
        !std::path::Path::new(&format!("/proc/{first}")).exists(),
        "the killed postmaster {first} was not reaped"
    );
    assert!(server.log_text().contains("embedded PostgreSQL restarted"));

    // A cluster that cannot start again (its PG_VERSION gone) fails liveness after five
    // tries, and passes again once a later try succeeds.
    let version = data.path().join("postgres/PG_VERSION");
    let away = data.path().join("PG_VERSION.away");
    std::fs::rename(&version, &away).unwrap();
    kill_postmaster(data.path());
    eventually(Duration::from_secs(90), "liveness fails", || live() == 503);
    assert_eq!(
        call(server.addr, "GET", "/health/live", None, "").json()["status"],
        "failing"
    );
    std::fs::rename(&away, &version).unwrap();
    eventually(Duration::from_secs(90), "the node recovers", || {
        live() == 200 && ingest() == 202
    });
    let log = server.log_text();
    assert!(log.contains("embedded PostgreSQL did not restart"), "{log}");
}

#[test]
fn queries_after_a_postgres_restart_do_not_fail_on_the_sessions_it_ended() {
    let data = data_dir();
    let _reaper = Reaper(data.path().to_path_buf());
    let dir = data.path().to_str().unwrap().to_string();
    let server = Server::start_with(&["--data-dir", &dir, "--query-threads", "2"]);
    let (key, _) = new_org(server.addr, "restarted");
    let signup = || {
        call(
            server.addr,
            "POST",
            "/api/keys/generate",
            None,
            r#"{"organization_name":"after"}"#,
        )
        .status
    };
    // Both query threads hold a connection.
    let statuses = all_at_once(server.addr, 8, move |_, c| {
        let body = br#"{"organization_name":"before"}"#;
        c.request("POST", "/api/keys/generate", &[], body)
            .unwrap()
            .status
    });
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");

    // A fast shutdown ends every session (FATAL 57P01); the server starts the cluster again.
    let first = postmaster_pid(data.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    eventually(Duration::from_secs(60), "a new postmaster serves", || {
        postmaster_pid(data.path()) != first
            && post_event(server.addr, &key, r#"{"type":"t","payload":{}}"#).status == 202
    });
    // Each query thread's old session is found ended before a query is sent on it.
    for _ in 0..4 {
        assert_eq!(signup(), 201);
    }
}

#[test]
fn the_embedded_cluster_starts_at_once_after_its_postmaster_is_killed_mid_query() {
    let dir = data_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let mut cluster = triggers::cluster::Cluster::new(dir.path()).unwrap();
    cluster.start(true).unwrap();
    let config = cluster.client_config();
    // A backend busy computing notices its postmaster's death only once it is done, and keeps
    // the cluster's shared memory until then.
    let busy = std::thread::spawn(move || {
        let mut c = config.connect(postgres::NoTls).unwrap();
        let _ = c.simple_query("SELECT count(*) FROM generate_series(1, 20000000)");
    });
    std::thread::sleep(Duration::from_millis(300));
    kill_postmaster(dir.path());
    drop(cluster);
    let started = Instant::now();
    let mut again = triggers::cluster::Cluster::new(dir.path()).unwrap();
    again
        .start(true)
        .expect("a new postmaster starts once the killed one's backends are gone");
    let mut db = again.client_config().connect(postgres::NoTls).unwrap();
    assert_eq!(db.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = busy.join();
    // The write-back pass looks in the server's database (found by its OID at start): a table
    // just written there is handed over, besides what the pass handed before.
    let writeback = again.writeback(Duration::from_secs(1));
    let before = writeback.pass();
    db.batch_execute("CREATE TABLE written (n int); INSERT INTO written VALUES (1)")
        .unwrap();
    assert!(writeback.pass() > before);
}

#[test]
fn a_server_killed_with_kill_9_takes_its_embedded_cluster_with_it_and_keeps_every_commit() {
    let dir = data_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut s = Server::start_with(&["--data-dir", &dir_s]);
    let (key, _) = new_org(s.addr, "killed");
    let id = post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).json()["id"].clone();
    s.kill();
    // The kernel tells the postmaster its server is gone: a fast shutdown, not a cluster left
    // running with nobody to stop it.
    let until = Instant::now() + Duration::from_secs(10);
    while triggers::cluster::is_running(dir.path()) {
        assert!(
            Instant::now() < until,
            "the cluster outlived its server by 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = Server::start_with(&["--data-dir", &dir_s]);
    let page = call(s.addr, "GET", "/api/inbox?status=all", Some(&key), "").json();
    assert_eq!(page["events"][0]["id"], id);
    assert!(!s.log_text().contains("adopting"), "{}", s.log_text());
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_event() {
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let data = data_dir();
    let _reaper = Reaper(data.path().to_path_buf());
    let dir = data.path().to_str().unwrap().to_string();
    let args = ["--data-dir", dir.as_str()];
    let mut server = Server::start_with(&args);
    let (key, org) = new_org(server.addr, "crash");
    let addr = Arc::new(Mutex::new(server.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    // Cycles alternate between events with dedup_ids and without, so kills land in both
    // write paths.
    let dedup = Arc::new(AtomicBool::new(true));
    let threads = load(
        addr.clone(),
        key,
        6,
        stop.clone(),
        acked.clone(),
        "c",
        dedup.clone(),
    );
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for cycle in 1..=cycles {
        dedup.store(cycle % 2 == 1, Ordering::Relaxed);
        let before = acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(150 + next() % 1200));
        // By turns: the server alone; the postmaster alone, which the running server must
        // restart (crash recovery) while clients retry; both at once, as in a power cut, which
        // the next server must find and recover.
        let victims = match cycle % 3 {
            1 => "server",
            2 => "postmaster",
            _ => "server and postmaster",
        };
        if victims != "postmaster" {
            server.kill();
        }
        if victims != "server" {
            kill_postmaster(data.path());
        }
        let at_kill = acked.lock().unwrap().len();
        if victims != "postmaster" {
            server = Server::start_with(&args);
            *addr.lock().unwrap() = server.addr;
        }
        eprintln!(
            "cycle {cycle}/{cycles} ({}): killed {victims} with {at_kill} acknowledged ({} this cycle)",
            if cycle % 2 == 1 {
                "dedup_ids"
            } else {
                "no dedup_ids"
            },
            at_kill - before
        );
    }
    // Let the clients' retries land, then stop them and check.
    let settle = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap();
    let (lost, duplicated) = lost_and_duplicated(&mut embedded_client(data.path()), &org, &acked);
    println!(
        "crash test: {cycles} kill -9 cycles, {} events acknowledged, {lost} lost, {duplicated} duplicated (settled in {:?})",
        acked.len(),
        settle.elapsed()
    );
    assert!(
        acked.len() > cycles * 10,
        "the load never got going: {}",
        acked.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(server.terminate().success());
}

#[test]
fn a_down_postgres_is_not_stormed_with_connections_or_warnings() {
    let cluster = TestCluster::start();
    let s = Server::start_with(&["--database-url", &cluster.url, "--query-threads", "2"]);
    cluster.stop();
    // Every /health runs a query; with PostgreSQL away, each is a reason to reconnect.
    let started = Instant::now();
    let mut c = Client::connect(s.addr).unwrap();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let r = c.request("GET", "/health", &[], b"").unwrap();
        assert_eq!(r.status, 503);
        answered += 1;
    }
    assert!(answered > 100, "only {answered} answers in 2 s");
    let log = s.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("query thread cannot connect"))
        .count();
    // Each thread warns when its connection first fails, then at most every 10 s.
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings for {answered} requests"
    );
    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(s.addr, "GET", "/health", None, "").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the query threads never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_outage_is_503_within_the_budget_and_nothing_answered_503_is_stored_later() {
    let cluster = TestCluster::start();
    let mut s = Server::start_with(&["--database-url", &cluster.url, "--storage-wait-ms", "1000"]);
    let (key, org) = new_org(s.addr, "outage");
    let event = |d: &str| format!(r#"{{"type":"t","payload":{{}},"dedup_id":"{d}"}}"#);
    assert_eq!(post_event(s.addr, &key, &event("before")).status, 202);

    cluster.stop();
    let started = Instant::now();
    let r = post_event(s.addr, &key, &event("during"));
    assert_eq!(
        (r.status, r.code()),
        (503, "storage_unavailable".to_string())
    );
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let ready = call(s.addr, "GET", "/health/ready", None, "");
    assert_eq!(ready.status, 503);

    cluster.restart();
    // The persisters reconnect on their own; the retry of the event answered 503 is a new
    // event (202), not a duplicate: it was never stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    let retry = loop {
        let r = post_event(s.addr, &key, &event("during"));
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        retry.status,
        202,
        "{}",
        String::from_utf8_lossy(&retry.body)
    );
    let org: Uuid = org.parse().unwrap();
    let n: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert!(s.terminate().success());
}

#[test]
fn a_full_ring_is_503_overloaded_at_once_and_nothing_refused_is_stored() {
    let cluster = TestCluster::start();
    let s = Server::start_with(&[
        "--database-url",
        &cluster.url,
        "--cores",
        "1",
        "--persisters",
        "1",
        "--ring-slots",
        "16",
        "--storage-wait-ms",
        "2000",
    ]);
    let (key, org) = new_org(s.addr, "full");
    cluster.stop();
    // With PostgreSQL gone the persister holds at most one ring's worth besides its batch, so
    // most of these find the ring full.
    let results = all_at_once(s.addr, 80, move |i, c| {
        let started = Instant::now();
        let body = format!(r#"{{"type":"t","payload":{{}},"dedup_id":"f{i}"}}"#);
        let r = c
            .request(
                "POST",
                "/api/events",
                &[("X-API-Key", &key)],
                body.as_bytes(),
            )
            .unwrap();
        (
            r.status,
            r.code(),
            r.header("retry-after").is_some(),
            started.elapsed(),
        )
    });
    let overloaded: Vec<_> = results.iter().filter(|r| r.1 == "overloaded").collect();
    assert!(!overloaded.is_empty(), "{results:?}");
    for (status, code, retry_after, took) in &results {
        assert_eq!(*status, 503, "{results:?}");
        assert!(*retry_after);
        if code == "overloaded" {
            assert!(
                *took < Duration::from_millis(1500),
                "overloaded should be at once: {took:?}"
            );
        } else {
            assert_eq!(code, "storage_unavailable");
        }
    }
    cluster.restart();
    let org: Uuid = org.parse().unwrap();
    let stored: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "events answered 503 must never be stored");
}

#[test]
fn enqueued_events_wait_out_a_postgres_outage_and_are_all_stored() {
    let cluster = TestCluster::start();
    let mut s = Server::start_with(&[
        "--database-url",
        &cluster.url,
        "--ack-mode",
        "enqueued",
        "--storage-wait-ms",
        "300",
    ]);
    let (key, org) = new_org(s.addr, "enqueued-outage");
    cluster.stop();
    // Acknowledged at once; the storage budget (300 ms) is for durable waiters only: these
    // already have their 2xx and must be stored when PostgreSQL returns, however late.
    post_numbered(s.addr, &key, 20, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1500));
    cluster.restart();
    let org: Uuid = org.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let n: i64 = cluster
            .client()
            .query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org])
            .unwrap()
            .get(0);
        if n == 20 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stored, 20);
    assert!(s.terminate().success());
}

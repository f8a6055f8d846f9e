//! Several nodes on one database, as the design deploys them behind a load balancer: three
//! `triggers serve` processes on the tests' cluster. A dedup_id is exact across them, ingest
//! spread over them loses nothing when one is killed (its clients retry elsewhere with the same
//! dedup_id), and a tier's rate limit holds across them (a node that cannot reach the shared
//! buckets fails open, and says so). Key rotation across three nodes: `keys_webhooks`;
//! deliveries shared by nodes: `webhooks`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use testkit::*;

use crate::durability::{load, lost_and_duplicated, Acked};

fn three_nodes() -> Vec<Server> {
    (0..3).map(|_| Server::start(&[])).collect()
}

#[test]
fn one_dedup_id_posted_at_once_to_three_nodes_is_stored_once_and_every_409_names_it() {
    let nodes = three_nodes();
    let (key, org) = new_org(nodes[0].addr, "three-nodes-dedup");
    let n = 32;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (addr, key, barrier) = (nodes[i % 3].addr, key.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                barrier.wait();
                let body = br#"{"type":"t","payload":{"n":1},"dedup_id":"across"}"#;
                c.request("POST", "/api/events", &[("X-API-Key", &key)], body)
                    .unwrap()
            })
        })
        .collect();
    let responses: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted: Vec<&Resp> = responses.iter().filter(|r| r.status == 202).collect();
    assert_eq!(accepted.len(), 1, "{responses:?}");
    let id = accepted[0].json()["id"].clone();
    let dups: Vec<&Resp> = responses.iter().filter(|r| r.status == 409).collect();
    assert_eq!(dups.len(), n - 1, "{responses:?}");
    for d in dups {
        assert_eq!(d.code(), "duplicate_event");
        assert_eq!(d.json()["id"], id);
    }
    let org: uuid::Uuid = org.parse().unwrap();
    let count: i64 = shared_cluster()
        .client()
        .query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[test]
fn ingest_spread_over_three_nodes_loses_nothing_when_one_is_killed() {
    let mut nodes = three_nodes();
    let (key, org) = new_org(nodes[0].addr, "three-nodes-kill");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let dedup = Arc::new(AtomicBool::new(true));
    let targets: Vec<Arc<Mutex<SocketAddr>>> =
        nodes.iter().map(|n| Arc::new(Mutex::new(n.addr))).collect();
    let threads: Vec<_> = targets
        .iter()
        .flat_map(|t| {
            let (stop, acked, dedup) = (stop.clone(), acked.clone(), dedup.clone());
            load(t.clone(), key.clone(), 3, stop, acked, "nodes", dedup)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let before_kill = acked.lock().unwrap().len();
    nodes[2].kill();
    // Its clients find the connection gone and send what they had not been answered to A.
    *targets[2].lock().unwrap() = nodes[0].addr;
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap();
    assert!(
        before_kill > 50,
        "only {before_kill} acknowledged before the kill"
    );
    assert!(acked.len() > before_kill, "the surviving nodes went on");
    for node in &nodes[..2] {
        let stats = call(node.addr, "GET", "/api/queue/stats", None, "").json();
        assert!(
            stats["events"]["committed"].as_u64().unwrap_or(0) > 0,
            "every node took a share: {stats}"
        );
    }
    let counts = lost_and_duplicated(&mut shared_cluster().client(), &org, &acked);
    assert_eq!(counts, (0, 0), "lost, duplicated");
}

#[test]
fn three_nodes_started_together_on_a_new_database_migrate_it_once_and_all_serve() {
    let url = shared_cluster().new_database("three_nodes_start");
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Server::start_with(&["--database-url", &url]))
        })
        .collect();
    let nodes: Vec<Server> = starts.into_iter().map(|s| s.join().unwrap()).collect();
    let (key, _) = new_org(nodes[0].addr, "started-together");
    for node in &nodes {
        assert_eq!(
            post_event(node.addr, &key, r#"{"type":"t","payload":{}}"#).status,
            202
        );
    }
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let applied: i64 = db
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files, "each migration applied once");
}

#[test]
fn a_tier_holds_across_three_nodes_where_each_node_alone_would_allow_three_times_as_much() {
    let nodes = three_nodes();
    // `free`: 100 per minute, burst 100; a node leases 5 at a time.
    let (key, _) = new_org_tier(nodes[0].addr, "three-nodes-limit", "free");
    let started = Instant::now();
    let clients: Vec<_> = (0..9)
        .map(|i| {
            let (addr, key) = (nodes[i % 3].addr, key.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                let event = br#"{"type":"t","payload":{}}"#;
                (0..30)
                    .map(|_| {
                        c.request("POST", "/api/events", &[("X-API-Key", &key)], event)
                            .unwrap()
                    })
                    .collect::<Vec<Resp>>()
            })
        })
        .collect();
    let per_client: Vec<Vec<Resp>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = |rs: &[Resp]| rs.iter().filter(|r| r.status == 202).count();
    let total: usize = per_client.iter().map(|rs| accepted(rs)).sum();
    let refused = per_client
        .iter()
        .flatten()
        .filter(|r| r.status == 429)
        .count();
    assert_eq!(total + refused, 270, "only 202 and 429");
    // The burst and what refilled meanwhile, within one lease per node either way (what a
    // node spent on credit, or holds unspent).
    let refill = (elapsed * 100.0 / 60.0).ceil() as usize;
    assert!(
        (100 - 3 * 5..=100 + 3 * 5 + refill).contains(&total),
        "accepted {total} of 270 in {elapsed:.2}s"
    );
    for (n, node) in nodes.iter().enumerate() {
        let mine: usize = per_client
            .iter()
            .skip(n)
            .step_by(3)
            .map(|rs| accepted(rs))
            .sum();
        assert!(mine > 0, "node {n} admitted none");
        let stats = call(node.addr, "GET", "/api/queue/stats", None, "").json();
        assert!(stats["rate_limits"]["leases"].as_u64().unwrap() > 0);
        assert_eq!(stats["rate_limits"]["fail_open"], 0);
    }
}

#[test]
fn a_node_that_cannot_reach_the_shared_buckets_admits_by_its_own_and_says_so() {
    let cluster = TestCluster::start();
    let s = Server::start_with(&["--database-url", &cluster.url, "--ack-mode", "enqueued"]);
    let (key, _) = new_org_tier(s.addr, "fail-open", "starter"); // 60 per minute
    assert_eq!(
        post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    // That request was admitted on credit; its lease (3) lands on its own.
    let stats = || call(s.addr, "GET", "/api/queue/stats", None, "").json();
    let waited = Instant::now();
    while stats()["rate_limits"]["leases"] != 1 {
        assert!(waited.elapsed() < Duration::from_secs(5), "no lease landed");
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.stop();
    // The key is cached; the shared bucket is gone with its database. Enqueued events wait in
    // the ring, and the node's own bucket (a full burst of 60) decides.
    let answers: Vec<u16> = (0..70)
        .map(|_| post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status)
        .collect();
    let admitted = answers.iter().filter(|&&s| s == 202).count();
    // The 2 tokens left of the first lease (3), the node's credit of one lease, then the own
    // bucket's burst (and what it refilled, should this take over a second).
    assert!((65..=66).contains(&admitted), "{answers:?}");
    assert!(answers.iter().all(|&s| s == 202 || s == 429), "{answers:?}");
    let limits = &stats()["rate_limits"];
    assert!(limits["fail_open"].as_u64().unwrap() >= 60, "{limits}");
}

//! Several nodes on one database, as the design deploys them behind a load balancer: three
//! `triggers serve` processes on the tests' cluster. A dedup_id is exact across them, and
//! ingest spread over them loses nothing when one is killed (its clients retry elsewhere with
//! the same dedup_id). A rotated key on another node: `keys_webhooks`; deliveries shared by
//! nodes: `webhooks`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

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

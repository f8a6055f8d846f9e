//! Backups of the embedded cluster (`triggers backup`): taken while the server ingests, or of a
//! stopped cluster; a server started on the copy holds every event acknowledged before the
//! backup began, and nothing that was never acknowledged.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use testkit::*;

/// `triggers backup --data-dir <data> <out>`.
fn backup(data: &Path, out: &Path) -> Output {
    Command::new(server_binary())
        .arg("backup")
        .arg("--data-dir")
        .arg(data)
        .arg(out)
        .env("TRIGGERS_LOG", "info")
        // As `serve` would, the command takes a database URL over the data directory.
        .env_remove("DATABASE_URL")
        .output()
        .expect("running triggers backup")
}

/// Ids the server acknowledged with a 202.
fn post(addr: std::net::SocketAddr, key: &str, i: usize) -> Option<String> {
    let r = post_event(
        addr,
        key,
        &format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#),
    );
    (r.status == 202).then(|| r.json()["id"].as_str().unwrap().to_string())
}

/// The ids of `org`'s events in the cluster of a server running on `data`.
fn stored(data: &Path, org: &str) -> HashSet<String> {
    let org: uuid::Uuid = org.parse().unwrap();
    embedded_client(data)
        .query("SELECT id FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
        .collect()
}

#[test]
fn a_backup_under_ingest_and_one_of_a_stopped_cluster_restore_every_acknowledged_event() {
    let (data, online, offline) = (data_dir(), data_dir(), data_dir());
    let _reapers = [data.path(), online.path(), offline.path()].map(|p| Reaper(p.into()));
    let dir = data.path().to_str().unwrap();
    let mut server = Server::start_with(&["--data-dir", dir]);
    let (key, org) = new_org(server.addr, "backed-up");
    let before: HashSet<String> = (0..50).filter_map(|i| post(server.addr, &key, i)).collect();
    assert_eq!(before.len(), 50);

    // Ingest goes on while the copy is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, key, stop) = (server.addr, key.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked = HashSet::new();
            for i in 1000.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                acked.extend(post(addr, &key, i));
            }
            acked
        })
    };
    let taken = backup(data.path(), online.path());
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();
    let said = String::from_utf8_lossy(&taken.stderr);
    assert!(taken.status.success(), "{said}");
    assert!(
        said.contains("--data-dir"),
        "says how to start from it: {said}"
    );
    assert!(!during.is_empty(), "the server went on answering meanwhile");
    assert!(
        !backup(data.path(), online.path()).status.success(),
        "a non-empty target is refused"
    );
    assert_eq!(server.terminate().code(), Some(0));

    // The cluster is stopped now: the backup starts it, copies it, and stops it again.
    let taken = backup(data.path(), offline.path());
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(
        !data.path().join("postgres/postmaster.pid").exists(),
        "the cluster was stopped again"
    );

    let restored = Server::start_with(&["--data-dir", online.path().to_str().unwrap()]);
    let found = stored(online.path(), &org);
    assert!(
        found.is_superset(&before),
        "every event acknowledged before the backup"
    );
    let acked: HashSet<String> = before.union(&during).cloned().collect();
    assert!(found.is_subset(&acked), "nothing never acknowledged");
    assert_eq!(
        post_event(restored.addr, &key, r#"{"type":"t","payload":{}}"#).status,
        202,
        "the copy serves, with the organization's key"
    );
    drop(restored);

    let _restored = Server::start_with(&["--data-dir", offline.path().to_str().unwrap()]);
    assert_eq!(
        stored(offline.path(), &org),
        acked,
        "a stopped cluster's copy is whole"
    );
}

#[test]
fn a_directory_without_a_cluster_is_refused_and_left_as_it_was() {
    let (empty, out) = (data_dir(), data_dir());
    let taken = backup(empty.path(), out.path());
    assert!(!taken.status.success());
    let said = String::from_utf8_lossy(&taken.stderr);
    assert!(said.contains("no embedded PostgreSQL cluster"), "{said}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

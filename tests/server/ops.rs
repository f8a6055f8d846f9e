//! The operator's commands (`triggers org`, `triggers keys`, `triggers stats`), run as an
//! operator runs them: the binary against the database a server uses, while that server runs
//! (changes reach it within a second) or, for the embedded cluster, while none does.

use std::process::Command;
use std::time::Duration;

use testkit::*;

use crate::durability::eventually;

/// Changes reach running nodes within this long.
const SECOND: Duration = Duration::from_secs(1);

/// Runs `triggers ARGS`; its standard output, or the test fails with what it said.
fn triggers(args: &[&str]) -> String {
    let out = Command::new(server_binary())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "triggers {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tier_of(addr: std::net::SocketAddr, key: &str) -> Option<String> {
    let r = call(addr, "GET", "/api/keys", Some(key), "");
    (r.status == 200).then(|| r.json()["tier"].as_str().unwrap().to_string())
}

#[test]
fn an_operator_creates_lists_retiers_and_revokes_while_the_server_runs() {
    let url = shared_cluster().new_database("ops");
    let server = Server::start_with(&["--database-url", &url]);
    let db = ["--database-url", url.as_str()];

    let created: serde_json::Value = serde_json::from_str(&triggers(
        &[&["org", "create", "acme", "--tier", "enterprise"][..], &db].concat(),
    ))
    .unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    let org = created["organization_id"].as_str().unwrap().to_string();
    assert_eq!(created["rate_limit_per_minute"], 100_000);
    assert_eq!(created["retention_days"], 90);
    let body = r#"{"type":"t","payload":{}}"#;
    assert_eq!(post_event(server.addr, &key, body).status, 202);
    assert_eq!(tier_of(server.addr, &key).as_deref(), Some("enterprise"));

    let listed = triggers(&[&["org", "list"][..], &db].concat());
    assert!(listed.starts_with("organization"), "{listed}");
    assert!(listed.contains(&org) && listed.contains("acme"), "{listed}");

    triggers(&[&["org", "set-tier", &org, "free"][..], &db].concat());
    eventually(SECOND, "the running server applies the new tier", || {
        tier_of(server.addr, &key).as_deref() == Some("free")
    });
    let r = post_event(server.addr, &key, body);
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));

    let keys = triggers(&[&["keys", "list", &org][..], &db].concat());
    assert!(keys.contains(&key[..12]), "{keys}");
    assert!(!keys.contains(&key[12..]), "a listing never shows a key");
    triggers(&[&["keys", "revoke", &org][..], &db].concat());
    eventually(SECOND, "the running server refuses the revoked key", || {
        post_event(server.addr, &key, body).status == 401
    });
    // An organization left without a key (a rotation whose answer was lost, a revocation) is
    // let back in by the operator, with a key the running server takes at once.
    let issued: serde_json::Value =
        serde_json::from_str(&triggers(&[&["keys", "create", &org][..], &db].concat())).unwrap();
    let new_key = issued["api_key"].as_str().unwrap();
    assert_eq!(issued["organization_id"], org.as_str());
    assert_eq!(post_event(server.addr, new_key, body).status, 202);
    assert_eq!(post_event(server.addr, &key, body).status, 401);

    // What a tenant chose for its name reaches the operator's terminal as text, never as
    // control sequences.
    let (_, forged) = new_org(server.addr, r"evil\u001b[2J\r\nforged-line");
    let listed = triggers(&[&["org", "list"][..], &db].concat());
    let line = listed.lines().find(|l| l.contains(&forged)).unwrap();
    assert!(
        line.contains(r"evil\u{1b}[2J\u{d}\u{a}forged-line"),
        "{listed}"
    );
    assert!(
        !listed.contains('\x1b') && !listed.contains('\r'),
        "{listed}"
    );

    let stats = triggers(&["stats", "--url", &server.url()]);
    assert!(
        stats.lines().nth(1).unwrap().starts_with("ingest"),
        "{stats}"
    );
    assert!(
        stats.contains("p99") && stats.contains("accepted"),
        "{stats}"
    );
}

#[test]
fn an_operator_command_on_a_stopped_embedded_server_starts_its_cluster_for_the_while() {
    let data = data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut first = Server::start_with(&["--data-dir", &dir]);
    assert!(first.terminate().success());

    let created: serde_json::Value =
        serde_json::from_str(&triggers(&["org", "create", "offline", "--data-dir", &dir])).unwrap();
    assert!(
        !data.path().join("postgres/postmaster.pid").exists(),
        "the cluster started for the command is stopped after it"
    );
    let server = Server::start_with(&["--data-dir", &dir]);
    let key = created["api_key"].as_str().unwrap();
    assert_eq!(
        post_event(server.addr, key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    let bad = Command::new(server_binary())
        .args(["org", "set-tier", "not-a-uuid", "free", "--data-dir", &dir])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an organization id"));
}

#[test]
fn the_host_check_reports_each_setting_and_a_running_servers_limits() {
    let server = Server::start(&[]);
    let out = Command::new(server_binary())
        .args(["check", "--pid", &server.pid().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let missing: usize = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of missing settings:\n{text}"));
    assert_eq!(out.status.success(), missing == 0, "{text}");
    for wanted in [
        "net.core.somaxconn",
        "vm.dirty_background_bytes",
        "open files",
        &format!("server {}:", server.pid()),
        "CPUs allowed",
        "PostgreSQL server binaries:",
    ] {
        assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
    }
    let gone = Command::new(server_binary())
        .args(["check", "--pid", "999999999"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
}

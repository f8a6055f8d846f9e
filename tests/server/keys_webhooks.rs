//! Key rotation (on every core, and on other nodes sharing the database) and webhook
//! configuration.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::*;

const EVENT: &str = r#"{"type":"t","payload":{}}"#;

#[test]
fn a_rotated_key_is_refused_on_every_core_from_the_response_on() {
    let s = Server::start(&[]);
    let (old, org) = new_org(s.addr, "rotate");
    // Warm every core's view of the old key.
    for _ in 0..8 {
        assert_eq!(post_event(s.addr, &old, EVENT).status, 202);
    }
    let r = call(s.addr, "POST", "/api/keys/rotate", Some(&old), "");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["organization_id"], org);
    assert!(j["rotated_at"].as_str().unwrap().ends_with('Z'));
    let new = j["api_key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // Fresh connections land on both cores.
    for _ in 0..16 {
        let r = post_event(s.addr, &old, EVENT);
        assert_eq!((r.status, r.code()), (401, "invalid_api_key".to_string()));
        assert_eq!(post_event(s.addr, &new, EVENT).status, 202);
    }
    let me = call(s.addr, "GET", "/api/keys", Some(&new), "").json();
    assert!(new.starts_with(me["api_key_prefix"].as_str().unwrap()));
}

#[test]
fn every_other_node_refuses_a_rotated_key_within_a_second() {
    let a = Server::start(&[]);
    let others = [Server::start(&[]), Server::start(&[])];
    let (old, _) = new_org(a.addr, "three-nodes");
    for n in &others {
        assert_eq!(post_event(n.addr, &old, EVENT).status, 202); // each caches the old key
    }
    let r = call(a.addr, "POST", "/api/keys/rotate", Some(&old), "");
    assert_eq!(r.status, 200);
    let rotated = Instant::now();
    for n in &others {
        let refused_after = loop {
            if post_event(n.addr, &old, EVENT).status == 401 {
                break rotated.elapsed();
            }
            assert!(
                rotated.elapsed() < Duration::from_secs(5),
                "node {} still accepts the old key",
                n.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            refused_after < Duration::from_secs(1),
            "took {refused_after:?}"
        );
    }
    let new = r.json()["api_key"].as_str().unwrap().to_string();
    for n in &others {
        assert_eq!(post_event(n.addr, &new, EVENT).status, 202);
    }
}

#[test]
fn webhook_config_is_set_shown_without_its_secret_and_deleted() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "hooks");
    let empty = call(s.addr, "GET", "/api/webhook/config", Some(&key), "").json();
    assert_eq!(empty["webhook_url"], Value::Null);

    let set = call(
        s.addr,
        "POST",
        "/api/webhook/config",
        Some(&key),
        r#"{"webhook_url":"https://hooks.example.com/in"}"#,
    );
    assert_eq!(set.status, 200);
    let j = set.json();
    assert_eq!(j["webhook_url"], "https://hooks.example.com/in");
    let secret = j["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 30);

    let shown = call(s.addr, "GET", "/api/webhook/config", Some(&key), "");
    assert!(!String::from_utf8_lossy(&shown.body).contains(secret));
    let shown = shown.json();
    assert_eq!(shown["webhook_url"], "https://hooks.example.com/in");
    assert!(secret.starts_with(shown["secret_prefix"].as_str().unwrap()));
    assert_eq!(
        call(s.addr, "GET", "/api/keys", Some(&key), "").json()["webhook_url"],
        "https://hooks.example.com/in"
    );

    // `url` is accepted too, as older clients send it.
    let alias = call(
        s.addr,
        "POST",
        "/api/webhook/config",
        Some(&key),
        r#"{"url":"http://93.184.216.34/x"}"#,
    );
    assert_eq!(alias.status, 200);

    let del = call(s.addr, "DELETE", "/api/webhook/config", Some(&key), "");
    assert_eq!(del.status, 204);
    assert!(del.body.is_empty());
    assert_eq!(
        call(s.addr, "GET", "/api/webhook/config", Some(&key), "").json()["webhook_url"],
        Value::Null
    );
}

#[test]
fn bad_or_private_webhook_urls_are_refused_unless_the_operator_allows_private() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "hook-rules");
    for (url, code) in [
        ("not a url", "invalid_webhook_url"),
        ("ftp://example.com/x", "invalid_webhook_url"),
        ("http://localhost:9000/hook", "webhook_url_not_allowed"),
        ("http://127.0.0.1/hook", "webhook_url_not_allowed"),
        ("http://10.0.0.8/hook", "webhook_url_not_allowed"),
        ("http://169.254.169.254/", "webhook_url_not_allowed"),
        ("http://[::1]/", "webhook_url_not_allowed"),
    ] {
        let r = call(
            s.addr,
            "POST",
            "/api/webhook/config",
            Some(&key),
            &json!({"webhook_url": url}).to_string(),
        );
        assert_eq!((r.status, r.code()), (400, code.to_string()), "{url}");
    }
    let open = Server::start(&["--webhook-allow-private", "true"]);
    let r = call(
        open.addr,
        "POST",
        "/api/webhook/config",
        Some(&key),
        r#"{"webhook_url":"http://127.0.0.1:9000/hook"}"#,
    );
    assert_eq!(r.status, 200);
}

//! Tiered rate limits: across cores within one lease, one token per event, headers on every
//! ingest response; self-serve key generation limited per address; the optional admin token.

use std::time::Instant;

use serde_json::json;
use testkit::*;

const EVENT: &[u8] = br#"{"type":"t","payload":{}}"#;

#[test]
fn a_tier_holds_across_cores_and_every_answer_says_where_it_stands() {
    let s = Server::start(&[]);
    let (key, _) = new_org_tier(s.addr, "free-tier", "free"); // 100 per minute, burst 100
    let started = Instant::now();
    let all: Vec<Resp> = all_at_once(s.addr, 8, move |_, c| {
        (0..20)
            .map(|_| {
                c.request("POST", "/api/events", &[("X-API-Key", &key)], EVENT)
                    .unwrap()
            })
            .collect::<Vec<Resp>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = all.iter().filter(|r| r.status == 202).count();
    let limited: Vec<&Resp> = all.iter().filter(|r| r.status == 429).collect();
    assert_eq!(accepted + limited.len(), 160);
    // The burst, plus what refilled meanwhile (100 per minute), plus at most the node's credit
    // of one lease (5: see `ratelimit::lease`), and not one more.
    let refill = (elapsed * 100.0 / 60.0).ceil() as usize;
    assert!(
        accepted >= 100 && accepted <= 100 + refill + 5,
        "accepted {accepted} in {elapsed:.2}s"
    );
    for r in &all {
        assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
        assert!(r.header("x-ratelimit-remaining").is_some());
        assert!(r.header("x-ratelimit-reset").is_some());
        assert_eq!(r.header("ratelimit-policy"), Some("\"free\";q=100;w=60"));
        assert!(r.header("ratelimit").unwrap().starts_with("\"free\";r="));
    }
    let l = limited[0];
    assert_eq!(l.code(), "rate_limited");
    assert!(l.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(l.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn a_batch_costs_one_token_per_event_all_or_nothing() {
    let s = Server::start(&[]);
    let (key, _) = new_org_tier(s.addr, "starter-tier", "starter"); // 60 per minute
    let batch =
        |n: usize| json!({"events": vec![json!({"type": "t", "payload": {}}); n]}).to_string();
    let over = call(s.addr, "POST", "/api/events/batch", Some(&key), &batch(61));
    assert_eq!(
        (over.status, over.code()),
        (429, "rate_limited".to_string())
    );
    let fits = call(s.addr, "POST", "/api/events/batch", Some(&key), &batch(60));
    assert_eq!(fits.status, 200);
    assert_eq!(fits.json()["accepted"], 60);
    assert_eq!(fits.header("x-ratelimit-remaining"), Some("0"));
    let single = call(
        s.addr,
        "POST",
        "/api/events",
        Some(&key),
        std::str::from_utf8(EVENT).unwrap(),
    );
    assert_eq!(single.status, 429);
    // Unlimited organizations carry no quota.
    let (free, _) = new_org(s.addr, "unlimited");
    let r = call(
        s.addr,
        "POST",
        "/api/events",
        Some(&free),
        std::str::from_utf8(EVENT).unwrap(),
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

#[test]
fn self_serve_key_generation_is_limited_per_address() {
    let s = Server::start(&["--keygen-per-minute", "3"]);
    for i in 0..3 {
        new_org(s.addr, &format!("signup-{i}"));
    }
    let r = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"one-too-many"}"#,
    );
    assert_eq!((r.status, r.code()), (429, "rate_limited".to_string()));
    assert!(r.header("retry-after").is_some());
}

#[test]
fn self_serve_signup_gets_at_most_the_configured_tier() {
    let url = shared_cluster().url.clone();
    // The compiled-in default (the harness opens every tier unless a test names one).
    let s = Server::start_with(&["--database-url", &url, "--keygen-tier-max", "free"]);
    let org = |tier: &str| {
        let body = format!(r#"{{"organization_name":"tiers","tier":"{tier}"}}"#);
        call(s.addr, "POST", "/api/keys/generate", None, &body)
    };
    let r = org("unlimited");
    assert_eq!((r.status, r.code()), (403, "tier_not_allowed".to_string()));
    assert_eq!(org("enterprise").status, 403);
    assert_eq!(org("free").status, 201);
    // starter (60/min) is below free (100/min).
    assert_eq!(org("starter").json()["tier"], "starter");
    let no_tier = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"default"}"#,
    );
    assert_eq!(no_tier.json()["tier"], "free");
    // An operator can open higher tiers to signup, or hand them out with the admin token.
    let open = Server::start_with(&["--database-url", &url, "--keygen-tier-max", "pro"]);
    let pro = call(
        open.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"p","tier":"pro"}"#,
    );
    assert_eq!(pro.status, 201);
    let admin = Server::start_with(&["--database-url", &url, "--admin-token", "adm"]);
    let mut c = Client::connect(admin.addr).unwrap();
    let r = c
        .request(
            "POST",
            "/api/keys/generate",
            &[("Authorization", "Bearer adm")],
            br#"{"organization_name":"u","tier":"unlimited"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 201);
}

#[test]
fn the_admin_token_guards_key_generation_and_stats() {
    let s = Server::start(&["--admin-token", "s3cret-admin"]);
    let body = r#"{"organization_name":"guarded"}"#;
    let open = call(s.addr, "POST", "/api/keys/generate", None, body);
    assert_eq!(
        (open.status, open.code()),
        (401, "admin_token_required".to_string())
    );
    let mut c = Client::connect(s.addr).unwrap();
    let wrong = c
        .request(
            "POST",
            "/api/keys/generate",
            &[("Authorization", "Bearer nope")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(wrong.status, 401);
    let ok = c
        .request(
            "POST",
            "/api/keys/generate",
            &[("Authorization", "Bearer s3cret-admin")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(ok.status, 201);
    assert_eq!(
        call(s.addr, "GET", "/api/queue/stats", None, "").status,
        401
    );
    let stats = c
        .request(
            "GET",
            "/api/queue/stats",
            &[("Authorization", "Bearer s3cret-admin")],
            b"",
        )
        .unwrap();
    assert_eq!(stats.status, 200);
    // Tenants still authenticate with their own key next to the admin header.
    let key = ok.json()["api_key"].as_str().unwrap().to_string();
    let r = c
        .request(
            "POST",
            "/api/events",
            &[
                ("X-API-Key", &key),
                ("Authorization", "Bearer s3cret-admin"),
            ],
            EVENT,
        )
        .unwrap();
    assert_eq!(r.status, 202);
}

//! The contract's routes over real sockets against a real PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::*;

fn server() -> Server {
    Server::start(&[])
}

#[test]
fn accepted_event_is_committed_with_exact_payload_type_and_organization() {
    let s = server();
    let (key, org) = new_org(s.addr, "acme");
    let payload =
        json!({"order": {"id": 42, "lines": [1.5, "two", null, true]}, "ü": "ß \u{1F600}"});
    let body = json!({"type": "order.created", "payload": payload, "dedup_id": "o-42"}).to_string();
    let r = post_event(s.addr, &key, &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["status"], "accepted");
    assert_eq!(j["message"], "Event accepted");
    assert_eq!(j["type"], "order.created");
    let id: uuid::Uuid = j["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);

    // Durable mode: the row is there the moment the 202 arrives.
    let mut db = shared_cluster().client();
    let row = db
        .query_one(
            "SELECT org_id::text, type, payload::text, dedup_id, status,
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM events WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), org);
    assert_eq!(row.get::<_, String>(1), "order.created");
    let stored: serde_json::Value = serde_json::from_str(&row.get::<_, String>(2)).unwrap();
    assert_eq!(stored, payload);
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("o-42"));
    assert_eq!(row.get::<_, String>(4), "pending");
    assert_eq!(row.get::<_, String>(5), j["created_at"].as_str().unwrap());
}

#[test]
fn concurrent_posts_of_one_dedup_id_commit_once_and_409s_name_the_stored_event() {
    let s = server();
    let (key, org) = new_org(s.addr, "dups");
    let n = 32;
    let responses: Vec<Resp> = all_at_once(s.addr, n, move |_, c| {
        c.request(
            "POST",
            "/api/events",
            &[("X-API-Key", &key)],
            br#"{"type":"t","payload":{"n":1},"dedup_id":"same"}"#,
        )
        .unwrap()
    });
    let accepted: Vec<&Resp> = responses.iter().filter(|r| r.status == 202).collect();
    let dups: Vec<&Resp> = responses.iter().filter(|r| r.status == 409).collect();
    assert_eq!(accepted.len(), 1, "{responses:?}");
    assert_eq!(dups.len(), n - 1);
    let id = accepted[0].json()["id"].clone();
    for d in dups {
        assert_eq!(d.code(), "duplicate_event");
        assert_eq!(d.json()["id"], id);
    }
    let mut db = shared_cluster().client();
    let org: uuid::Uuid = org.parse().unwrap();
    let count: i64 = db
        .query_one("SELECT count(*) FROM events WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[test]
fn one_dedup_id_in_two_organizations_is_two_events() {
    let s = server();
    let (a, _) = new_org(s.addr, "a");
    let (b, _) = new_org(s.addr, "b");
    let body = r#"{"type":"t","payload":{},"dedup_id":"shared-id"}"#;
    let ra = post_event(s.addr, &a, body);
    let rb = post_event(s.addr, &b, body);
    assert_eq!((ra.status, rb.status), (202, 202));
    assert_ne!(ra.json()["id"], rb.json()["id"]);
}

#[test]
fn malformed_events_get_400_with_the_right_code() {
    let s = server();
    let (key, _) = new_org(s.addr, "bad-input");
    let cases = [
        ("", "invalid_json"),
        ("{not json", "invalid_json"),
        (r#"{"type":"t","payload":{}"#, "invalid_json"),
        ("[]", "invalid_event"),
        (r#"{"payload":{}}"#, "invalid_event"),
        (r#"{"type":"t"}"#, "invalid_event"),
        (r#"{"type":"t","payload":[1]}"#, "invalid_event"),
        (r#"{"type":"t","payload":"x"}"#, "invalid_event"),
        (r#"{"type":"","payload":{}}"#, "invalid_event"),
        (r#"{"type":"a b","payload":{}}"#, "invalid_event"),
        (r#"{"type":1,"payload":{}}"#, "invalid_event"),
        (
            r#"{"type":"t","payload":{},"dedup_id":""}"#,
            "invalid_event",
        ),
        (r#"{"type":"t","payload":{"s":"\u0000"}}"#, "invalid_event"),
        (r#"{"type":"t","payload":{"s":"\ud800"}}"#, "invalid_event"),
    ];
    for (body, code) in cases {
        let r = post_event(s.addr, &key, body);
        assert_eq!(
            (r.status, r.code()),
            (400, code.to_string()),
            "body {body:?}"
        );
        assert!(r.json()["error"].as_str().unwrap().len() > 5);
    }
    let long_type = format!(r#"{{"type":"{}","payload":{{}}}}"#, "a".repeat(256));
    assert_eq!(post_event(s.addr, &key, &long_type).code(), "invalid_event");
}

#[test]
fn values_jsonb_would_refuse_are_400_before_they_are_queued() {
    let s = server();
    let (key, _) = new_org(s.addr, "numeric");
    let deep = format!("{}1{}", "[".repeat(600), "]".repeat(600));
    let digits = "9".repeat(200_000);
    for payload in [
        r#"{"n":1e999999}"#.to_string(),
        r#"{"n":1e-16384}"#.to_string(),
        r#"{"n":0e-20000}"#.to_string(),
        format!(r#"{{"n":{digits}}}"#),
        format!(r#"{{"n":{deep}}}"#),
    ] {
        let body = format!(r#"{{"type":"t","payload":{payload}}}"#);
        let bad = post_event(s.addr, &key, &body);
        assert_eq!((bad.status, bad.code()), (400, "invalid_event".to_string()));
    }
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert_eq!(
        stats["events"]["refused_by_storage"], 0,
        "none reached PostgreSQL"
    );
    let good = post_event(s.addr, &key, r#"{"type":"t","payload":{"n":1e131071}}"#);
    assert_eq!(good.status, 202);
}

#[test]
fn a_row_postgres_refuses_is_a_400_and_other_tenants_events_still_commit() {
    // A private cluster, where a constraint makes PostgreSQL refuse one event type.
    let cluster = TestCluster::start();
    let s = Server::start_with(&["--database-url", &cluster.url]);
    cluster
        .client()
        .batch_execute("ALTER TABLE events ADD CONSTRAINT no_poison CHECK (type <> 'poison')")
        .unwrap();
    let (attacker, _) = new_org(s.addr, "attacker");
    let (victim, _) = new_org(s.addr, "victim");
    let event = |kind: &str, i: usize| format!(r#"{{"type":"{kind}","payload":{{"i":{i}}}}}"#);
    let poison = std::thread::spawn({
        let addr = s.addr;
        move || {
            (0..40)
                .map(|i| post_event(addr, &attacker, &event("poison", i)).status)
                .collect::<Vec<u16>>()
        }
    });
    let mut c = Client::connect(s.addr).unwrap();
    for i in 0..40 {
        let r = c
            .request(
                "POST",
                "/api/events",
                &[("X-API-Key", &victim)],
                event("fine", i).as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    }
    let refused = poison.join().unwrap();
    assert!(refused.iter().all(|&s| s == 400), "{refused:?}");
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert_eq!(stats["events"]["refused_by_storage"], 40);
}

#[test]
fn payload_over_256_kib_is_413() {
    let s = server();
    let (key, _) = new_org(s.addr, "big");
    let big = format!(
        r#"{{"type":"t","payload":{{"s":"{}"}}}}"#,
        "x".repeat(300_000)
    );
    let r = post_event(s.addr, &key, &big);
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_string()));
    let fits = format!(
        r#"{{"type":"t","payload":{{"s":"{}"}}}}"#,
        "x".repeat(200_000)
    );
    assert_eq!(post_event(s.addr, &key, &fits).status, 202);
}

#[test]
fn missing_and_invalid_keys_are_401() {
    let s = server();
    let body = r#"{"type":"t","payload":{}}"#;
    let r = post_event_without_key(&s, body);
    assert_eq!((r.status, r.code()), (401, "missing_api_key".to_string()));
    for key in ["nope", "trg_0000", &format!("trg_{}", "0".repeat(72))] {
        let r = post_event(s.addr, key, body);
        assert_eq!(
            (r.status, r.code()),
            (401, "invalid_api_key".to_string()),
            "{key}"
        );
    }
    // Well-formed, valid checksum, never issued: refused after the look-up.
    let unknown = triggers::auth::NewKey::generate().plaintext;
    let r = post_event(s.addr, &unknown, body);
    assert_eq!((r.status, r.code()), (401, "invalid_api_key".to_string()));
    // The bearer form works like X-API-Key.
    let (key, _) = new_org(s.addr, "bearer");
    let mut c = Client::connect(s.addr).unwrap();
    let auth = format!("Bearer {key}");
    let r = c
        .request(
            "POST",
            "/api/events",
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 202);
}

fn post_event_without_key(s: &Server, body: &str) -> Resp {
    call(s.addr, "POST", "/api/events", None, body)
}

#[test]
fn keys_are_generated_once_and_described_without_the_key() {
    let s = server();
    let r = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"Tiered","tier":"pro"}"#,
    );
    assert_eq!(r.status, 201);
    let j = r.json();
    let key = j["api_key"].as_str().unwrap();
    assert!(key.starts_with("trg_"));
    assert_eq!(j["organization_name"], "Tiered");
    assert_eq!(j["tier"], "pro");
    assert_eq!(j["rate_limit_per_minute"], 1000);
    assert!(j["created_at"].as_str().unwrap().ends_with('Z'));

    let me = call(s.addr, "GET", "/api/keys", Some(key), "");
    assert_eq!(me.status, 200);
    let m = me.json();
    assert_eq!(m["organization_id"], j["organization_id"]);
    assert_eq!(m["tier"], "pro");
    assert_eq!(m["webhook_url"], serde_json::Value::Null);
    assert!(key.starts_with(m["api_key_prefix"].as_str().unwrap()));
    assert!(!String::from_utf8_lossy(&me.body).contains(key));

    let default = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"x"}"#,
    );
    assert_eq!(default.json()["tier"], "free");
    let bad = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"organization_name":"x","tier":"gold"}"#,
    );
    assert_eq!((bad.status, bad.code()), (400, "invalid_tier".to_string()));
    let noname = call(
        s.addr,
        "POST",
        "/api/keys/generate",
        None,
        r#"{"tier":"free"}"#,
    );
    assert_eq!(noname.status, 400);

    // Only the hash is stored.
    let mut db = shared_cluster().client();
    let org: uuid::Uuid = j["organization_id"].as_str().unwrap().parse().unwrap();
    let stored: Vec<u8> = db
        .query_one("SELECT key_hash FROM api_keys WHERE org_id = $1", &[&org])
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key[4..20]));
}

#[test]
fn health_routes_answer_without_auth() {
    let s = server();
    let h = call(s.addr, "GET", "/health", None, "");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["database"], "ok");
    assert!(h.json()["uptime_s"].is_u64());
    assert_eq!(
        call(s.addr, "GET", "/health/live", None, "").json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        call(s.addr, "GET", "/health/ready", None, "").json(),
        json!({"status": "ready"})
    );
}

#[test]
fn unknown_routes_404_wrong_methods_405_with_allow_and_request_ids_everywhere() {
    let s = server();
    let r = call(s.addr, "GET", "/nowhere", None, "");
    assert_eq!((r.status, r.code()), (404, "not_found".to_string()));
    assert!(r.header("x-request-id").is_some());
    let r = call(s.addr, "GET", "/api/events", None, "");
    assert_eq!(
        (r.status, r.code()),
        (405, "method_not_allowed".to_string())
    );
    assert_eq!(r.header("allow"), Some("POST"));
    let mut c = Client::connect(s.addr).unwrap();
    let r = c
        .request("GET", "/health/live", &[("X-Request-Id", "trace-123")], b"")
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    let a = call(s.addr, "GET", "/health/live", None, "");
    let b = call(s.addr, "GET", "/health/live", None, "");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[test]
fn queue_stats_merge_every_core_and_serialize_histograms() {
    let s = server();
    let (key, _) = new_org(s.addr, "stats");
    for i in 0..20 {
        assert_eq!(
            post_event(
                s.addr,
                &key,
                &format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)
            )
            .status,
            202
        );
    }
    // The ingest histogram records a request once its response is written, which can trail
    // the client's read of it by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let j = loop {
        let j = call(s.addr, "GET", "/api/queue/stats", None, "").json();
        if j["latency_us"]["ingest"]["count"].as_u64().unwrap() >= 20 || Instant::now() > deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(j["ack_mode"], "durable");
    assert!(j["events"]["accepted"].as_u64().unwrap() >= 20);
    assert!(j["events"]["committed"].as_u64().unwrap() >= 20);
    assert!(j["batches_committed"].as_u64().unwrap() >= 1);
    assert_eq!(j["persisters"]["running"], 2);
    // Each persister connects from its own thread after start-up: under a loaded test run the
    // first can commit all 20 events before the second is through. Both must get there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = j["persisters"]["connected"].clone();
    while connected != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        connected = call(s.addr, "GET", "/api/queue/stats", None, "").json()["persisters"]
            ["connected"]
            .clone();
    }
    assert_eq!(connected, 2);
    assert_eq!(j["cores"].as_array().unwrap().len(), 2);
    let ingest = &j["latency_us"]["ingest"];
    assert!(ingest["count"].as_u64().unwrap() >= 20);
    for p in ["p50", "p90", "p99", "p99_9", "p99_99", "max"] {
        assert!(ingest[p].as_u64().unwrap() > 0, "{p}");
    }
    assert!(j["latency_us"]["commit"]["count"].as_u64().unwrap() >= 1);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(j["histograms"]["ingest_us"].as_str().unwrap())
        .unwrap();
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .unwrap();
    assert_eq!(h.len(), ingest["count"].as_u64().unwrap());
    let text = call(s.addr, "GET", "/api/queue/stats?format=hgrm", None, "");
    assert_eq!(text.header("x-histogram"), Some("ingest"));
    assert_eq!(text.header("x-histogram-unit"), Some("ms"));
    let text = String::from_utf8(text.body).unwrap();
    assert!(
        text.contains("Percentile") && text.contains("#[Max"),
        "{text}"
    );
    let commit = call(
        s.addr,
        "GET",
        "/api/queue/stats?format=hgrm&histogram=commit",
        None,
        "",
    );
    assert_eq!(commit.header("x-histogram"), Some("commit"));
    assert!(String::from_utf8(commit.body)
        .unwrap()
        .contains("Percentile"));
    let unknown = call(
        s.addr,
        "GET",
        "/api/queue/stats?format=hgrm&histogram=nope",
        None,
        "",
    );
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.code(), "invalid_parameter");
}

#[test]
fn config_file_environment_and_flags_stack_in_that_order() {
    let dir = data_dir();
    let file = dir.path().join("triggers.toml");
    std::fs::write(&file, "ack_mode = \"enqueued\"\nring_slots = 64\n").unwrap();
    let url = shared_cluster().url.clone();
    let file = file.to_str().unwrap();
    // The file sets both; the environment overrides ring_slots; a flag overrides the environment.
    let s = Server::start_with_env(
        &[
            "--database-url",
            &url,
            "--config",
            file,
            "--ring-slots",
            "128",
        ],
        &[("TRIGGERS_RING_SLOTS", "32"), ("TRIGGERS_CORES", "1")],
    );
    let j = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert_eq!(j["ack_mode"], "enqueued");
    assert_eq!(j["queue_capacity"], 128);
    assert_eq!(j["cores"].as_array().unwrap().len(), 1);
}

#[test]
fn out_of_range_settings_stop_the_server_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggers"))
        .args([
            "serve",
            "--ring-slots",
            "1",
            "--database-url",
            "host=/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring_slots"), "{err}");
}

#[test]
fn a_server_restarted_at_once_after_kill_9_gets_its_port_back() {
    let url = shared_cluster().url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut s = Server::start_with(&["--database-url", &url, "--listen", &listen]);
    for _ in 0..3 {
        s.kill();
        // As a supervisor would: at once, on the same port.
        s = Server::start_with(&["--database-url", &url, "--listen", &listen]);
        assert_eq!(call(s.addr, "GET", "/health/live", None, "").status, 200);
    }
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    let s = server();
    let url = shared_cluster().url.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggers"))
        .args([
            "serve",
            "--listen",
            &s.addr.to_string(),
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Address already in use"), "{err}");
    // The first server still answers every request itself.
    assert_eq!(call(s.addr, "GET", "/health/live", None, "").status, 200);
}

#[test]
fn metrics_expose_the_same_figures_for_prometheus() {
    let s = server();
    let (key, _) = new_org(s.addr, "metrics");
    for _ in 0..5 {
        assert_eq!(
            post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status,
            202
        );
    }
    let value = |text: &str, line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The ingest histogram records a request once its response is written, which can trail
    // the client's read of it by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let r = call(s.addr, "GET", "/metrics", None, "");
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = String::from_utf8(r.body).unwrap();
        if value(&text, "triggers_ingest_seconds_count") >= 5.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let value = |line_start: &str| value(&text, line_start);
    assert!(value("triggers_events_total{outcome=\"accepted\"}") >= 5.0);
    assert!(value("triggers_ingest_seconds_bucket{le=\"0.0001\"}") >= 0.0);
    let count = value("triggers_ingest_seconds_count");
    assert!(count >= 5.0);
    assert_eq!(value("triggers_ingest_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(value("triggers_ingest_seconds_bucket{le=\"10\"}") <= count);
    assert_eq!(value("triggers_durable_ack"), 1.0);
    assert!(text.contains("# TYPE triggers_commit_seconds histogram"));
    assert!(text.contains("triggers_queue_depth{core=\"1\"}"));
}

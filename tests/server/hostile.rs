//! Hostile input, each shape answered with its documented status before it can pin memory or
//! time: framing that never ends, bodies that keep arriving past their deadline, requests that
//! cannot be authenticated, ambiguous credentials, and targets RFC 9112 defines.

use std::io::Write;
use std::net::TcpStream;

use std::time::{Duration, Instant};

use testkit::*;

/// Sends `head`, then `piece` over and over on another thread until `total` bytes or a write
/// fails (the server closed), pausing `every` between pieces.
fn stream_after(
    addr: std::net::SocketAddr,
    head: String,
    piece: Vec<u8>,
    total: usize,
    every: Duration,
) -> Client {
    let mut c = Client::connect(addr).unwrap();
    c.send_raw(head.as_bytes()).unwrap();
    let mut raw: TcpStream = c.writer().unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total && raw.write_all(&piece).is_ok() {
            sent += piece.len();
            std::thread::sleep(every);
        }
    });
    c
}

fn chunked_head(key: &str) -> String {
    format!(
        "POST /api/events HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
}

#[test]
fn chunk_lines_and_trailers_that_never_end_are_400_before_they_are_buffered() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "endless");
    for endless in ["1b;x=", "0\r\nX-Trailer: "] {
        let started = Instant::now();
        let mut c = stream_after(
            s.addr,
            format!("{}{endless}", chunked_head(&key)),
            vec![b'a'; 64 * 1024],
            64 << 20,
            Duration::ZERO,
        );
        let r = c.read_response().unwrap();
        assert_eq!(
            (r.status, r.code()),
            (400, "bad_request".to_string()),
            "{endless:?}"
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(started.elapsed() < Duration::from_secs(5), "{endless:?}");
    }
}

#[test]
fn a_body_still_arriving_at_its_deadline_is_408() {
    let s = Server::start(&["--body-timeout-ms", "500"]);
    let (key, _) = new_org(s.addr, "stream");
    let head = format!(
        "POST /api/events/batch HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // ~3 MB/s: bytes are always waiting when the server reads, and the 5 MiB batch bound is
    // ~1.7 s away, well past the 500 ms deadline.
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024)).into_bytes();
    let started = Instant::now();
    let mut c = stream_after(s.addr, head, chunk, 64 << 20, Duration::from_millis(5));
    let r = c.read_response().unwrap();
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.code()),
        (408, "request_timeout".to_string()),
        "after {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "408 after {took:?}");
}

#[test]
fn a_request_that_cannot_be_authenticated_is_refused_before_its_body_is_read() {
    let s = Server::start(&[]);
    for (key_header, code) in [
        ("", "missing_api_key"),
        ("X-API-Key: not-a-key\r\n", "invalid_api_key"),
    ] {
        let mut c = Client::connect(s.addr).unwrap();
        // The body is announced and never sent: only the head can be answered.
        c.send_raw(
            format!(
                "POST /api/events/batch HTTP/1.1\r\nHost: t\r\n{key_header}Content-Length: 4000000\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let started = Instant::now();
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.code()), (401, code.to_string()));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_refused_request_with_a_small_body_keeps_its_connection() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr).unwrap();
    let event = r#"{"type":"t","payload":{}}"#;
    let r = c
        .request("POST", "/api/events", &[], event.as_bytes())
        .unwrap();
    assert_eq!((r.status, r.code()), (401, "missing_api_key".to_string()));
    assert_eq!(r.header("connection"), None);
    assert_eq!(
        c.request("GET", "/health/live", &[], b"").unwrap().status,
        200
    );
}

#[test]
fn ambiguous_credentials_are_400_and_matching_ones_pass() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "ambiguous");
    let (other, _) = new_org(s.addr, "ambiguous-2");
    let event = r#"{"type":"t","payload":{}}"#;
    let mut c = Client::connect(s.addr).unwrap();
    for headers in [
        vec![("X-API-Key", key.as_str()), ("X-API-Key", other.as_str())],
        vec![("X-API-Key", key.as_str()), ("X-API-Key", key.as_str())],
    ] {
        let r = c
            .request("POST", "/api/events", &headers, event.as_bytes())
            .unwrap();
        assert_eq!(
            (r.status, r.code()),
            (400, "ambiguous_credentials".to_string())
        );
        c = Client::connect(s.addr).unwrap();
    }
    let bearer = format!("Bearer {other}");
    let r = c
        .request(
            "POST",
            "/api/events",
            &[("X-API-Key", &key), ("Authorization", &bearer)],
            event.as_bytes(),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.code()),
        (400, "ambiguous_credentials".to_string())
    );
    let mut c = Client::connect(s.addr).unwrap();
    let same = format!("Bearer {key}");
    let r = c
        .request(
            "POST",
            "/api/events",
            &[("X-API-Key", &key), ("Authorization", &same)],
            event.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 202);
}

#[test]
fn host_is_required_once_and_absolute_and_asterisk_targets_are_understood() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET /health/live HTTP/1.1\r\n\r\n").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.code()), (400, "bad_request".to_string()));
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 400);
    // HTTP/1.0 needs no Host.
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET /health/live HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);

    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET http://t:8090/health/live HTTP/1.1\r\nHost: t:8090\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    c.send_raw(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, DELETE"));
}

/// The node's body budget, as `/api/queue/stats` reports it.
fn budget_held(addr: std::net::SocketAddr) -> u64 {
    call(addr, "GET", "/api/queue/stats", None, "").json()["body_budget"]["held_bytes"]
        .as_u64()
        .unwrap()
}

fn wait_for_budget(addr: std::net::SocketAddr, held: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while budget_held(addr) != held {
        assert!(Instant::now() < deadline, "budget never held {held} bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn large_bodies_share_one_node_budget_and_small_requests_still_pass() {
    const MIB: usize = 1 << 20;
    let s = Server::start(&["--body-budget-bytes", &(12 * MIB).to_string()]);
    let (key, _) = new_org(s.addr, "holder");
    // Ten 200 KB events to page through later, stored while the budget is free.
    let payload = format!(r#"{{"blob":"{}"}}"#, "p".repeat(200_000));
    for _ in 0..10 {
        let r = post_event(
            s.addr,
            &key,
            &format!(r#"{{"type":"big","payload":{payload}}}"#),
        );
        assert_eq!(r.status, 202);
    }
    wait_for_budget(s.addr, 0);
    let batch_head = |len: usize| {
        format!(
            "POST /api/events/batch HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nContent-Length: {len}\r\n\r\n{{"
        )
    };
    // Two slow 5 MiB batches hold 10 MiB of the 12 while their bodies trickle in.
    let holders: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(s.addr).unwrap();
            c.send_raw(batch_head(5 * MIB).as_bytes()).unwrap();
            c
        })
        .collect();
    wait_for_budget(s.addr, 10 * MIB as u64);

    // A third is answered before its body is read.
    let mut third = Client::connect(s.addr).unwrap();
    third.send_raw(batch_head(5 * MIB).as_bytes()).unwrap();
    let r = third.read_response().unwrap();
    assert_eq!((r.status, r.code()), (503, "overloaded".to_string()));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));

    // Small requests still pass; a page of large events ends early, within what is left.
    assert_eq!(
        post_event(s.addr, &key, r#"{"type":"small","payload":{}}"#).status,
        202
    );
    let page = |query: &str| {
        let r = call(s.addr, "GET", &format!("/api/inbox{query}"), Some(&key), "");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        (r.body.len(), r.json())
    };
    let (bytes, squeezed) = page("?type=big&limit=10");
    let shown = squeezed["events"].as_array().unwrap().len();
    assert!((1..10).contains(&shown), "{shown} events in a 2 MiB budget");
    assert!(bytes < 2 * MIB, "{bytes}");
    assert_eq!(squeezed["has_more"], true);
    let cursor = squeezed["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = page(&format!("?type=big&limit=10&cursor={cursor}"));
    assert_eq!(
        shown + rest["events"].as_array().unwrap().len(),
        10,
        "the cursor walk still sees every event"
    );

    // Released, the budget takes large bodies again: a whole page, a 5 MiB batch.
    drop(holders);
    wait_for_budget(s.addr, 0);
    let (_, whole) = page("?type=big&limit=10");
    assert_eq!(whole["events"].as_array().unwrap().len(), 10);
    let event = format!(
        r#"{{"type":"b","payload":{{"x":"{}"}}}}"#,
        "y".repeat(5_000)
    );
    let events = vec![event; 1000].join(",");
    let body = format!(r#"{{"events":[{events}]}}"#);
    assert!(body.len() > 4 * MIB);
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), &body);
    assert!(r.status < 300, "{} {:?}", r.status, r.json());
    wait_for_budget(s.addr, 0);
}

#[test]
fn an_address_guessing_keys_is_refused_before_its_guesses_are_looked_up() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "known");
    assert_eq!(
        post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    let guess = || {
        let stranger = triggers::auth::NewKey::generate().plaintext;
        call(s.addr, "GET", "/api/inbox", Some(&stranger), "")
    };
    // Each guess is looked up and refused, up to the address's budget of 60 a minute...
    for _ in 0..60 {
        let r = guess();
        assert_eq!((r.status, r.code()), (401, "invalid_api_key".to_string()));
    }
    // ...then refused before any look-up, with the time to wait.
    let r = guess();
    assert_eq!((r.status, r.code()), (429, "rate_limited".to_string()));
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // A key the node knows still passes from the same address.
    assert_eq!(
        post_event(s.addr, &key, r#"{"type":"t","payload":{}}"#).status,
        202
    );
    assert_eq!(
        call(s.addr, "GET", "/api/inbox", Some(&key), "").status,
        200
    );
}

/// Answers the pace held back, from the stats.
fn held_back(addr: std::net::SocketAddr) -> u64 {
    call(addr, "GET", "/api/queue/stats", None, "").json()["pace"]["held_back"]
        .as_u64()
        .unwrap()
}

/// `n` requests on one connection, one after the other, each answered `status`; how long
/// they took.
fn one_by_one(
    addr: std::net::SocketAddr,
    n: usize,
    (method, path, key, body): (&str, &str, Option<&str>, &str),
    status: u16,
) -> Duration {
    let mut c = Client::connect(addr).unwrap();
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let started = Instant::now();
    for _ in 0..n {
        let r = c.request(method, path, &headers, body.as_bytes()).unwrap();
        assert_eq!(r.status, status, "{method} {path}");
    }
    started.elapsed()
}

#[test]
fn answers_that_serve_no_one_wait_their_turn_while_clients_are_served_and_those_do_not() {
    // 20 such answers a second (one per 50 ms) after a burst of 32.
    let s = Server::start(&["--cores", "1", "--pace-answers-per-s", "20"]);
    let (key, _) = new_org(s.addr, "tenant");
    let probe = ("GET", "/health/live", None, "");

    // A node that serves no one answers probes at once.
    one_by_one(s.addr, 100, probe, 200);
    assert_eq!(held_back(s.addr), 0);

    // A tenant posts every 50 ms while 100 probes, then 60 of its own invalid events, run:
    // past the burst, the probes and the refusals are paced; the tenant's events are not.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tenant = {
        let (addr, key, stop) = (s.addr, key.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                assert_eq!(
                    post_event(addr, &key, r#"{"type":"t","payload":{}}"#).status,
                    202
                );
                took.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            took.sort();
            took
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let probes = one_by_one(s.addr, 100, probe, 200);
    let invalid = (
        "POST",
        "/api/events",
        Some(key.as_str()),
        r#"{"type":"bad type","payload":{}}"#,
    );
    let refusals = one_by_one(s.addr, 60, invalid, 400);
    // A batch whose every event is refused is answered 200, and paced as a refusal.
    let refused_batch = (
        "POST",
        "/api/events/batch",
        Some(key.as_str()),
        r#"{"events":[{"type":"bad type","payload":{}}]}"#,
    );
    let refused_batches = one_by_one(s.addr, 30, refused_batch, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tenant = tenant.join().unwrap();
    // 100 probes: 33 at once, then one per 50 ms (~3.35 s); 60 refusals and 30 refused
    // batches, one per 50 ms.
    assert!(probes >= Duration::from_secs(3), "probes took {probes:?}");
    assert!(
        refusals >= Duration::from_secs(2),
        "refusals took {refusals:?}"
    );
    assert!(
        refused_batches >= Duration::from_secs(1),
        "refused batches took {refused_batches:?}"
    );
    assert!(held_back(s.addr) >= 130);
    let median = tenant[tenant.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "tenant's median {median:?}"
    );

    // Once no one has been served for the busy window, the pace lifts.
    std::thread::sleep(triggers::http::pace::BUSY_WINDOW + Duration::from_millis(500));
    let before = held_back(s.addr);
    one_by_one(s.addr, 100, probe, 200);
    assert_eq!(held_back(s.addr), before);
}

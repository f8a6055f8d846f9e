//! HTTP/1.1 framing over raw sockets: keep-alive, pipelining, chunked bodies, limits, and the
//! RFC 9112 rules for ambiguous lengths.

use std::time::{Duration, Instant};

use testkit::*;

const EVENT: &str = r#"{"type":"t","payload":{"k":"v"}}"#;

fn post_head(key: &str, extra: &str) -> String {
    format!("POST /api/events HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n{extra}\r\n")
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "ka");
    let mut c = Client::connect(s.addr).unwrap();
    for _ in 0..5 {
        let r = c
            .request(
                "POST",
                "/api/events",
                &[("X-API-Key", &key)],
                EVENT.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.header("connection"), None);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "pipe");
    let mut c = Client::connect(s.addr).unwrap();
    let mut burst = String::new();
    for i in 0..10 {
        let body = format!(r#"{{"type":"t","payload":{{}},"dedup_id":"p{}"}}"#, i % 5);
        burst.push_str(&post_head(
            &key,
            &format!("Content-Length: {}\r\n", body.len()),
        ));
        burst.push_str(&body);
        burst.push_str("GET /health/live HTTP/1.1\r\nHost: t\r\nX-Request-Id: live-");
        burst.push_str(&i.to_string());
        burst.push_str("\r\n\r\n");
    }
    c.send_raw(burst.as_bytes()).unwrap();
    for i in 0..10 {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, if i < 5 { 202 } else { 409 }, "event {i}");
        let live = c.read_response().unwrap();
        assert_eq!(live.status, 200);
        assert_eq!(live.header("x-request-id").unwrap(), format!("live-{i}"));
    }
}

#[test]
fn chunked_bodies_are_decoded() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "chunked");
    let mut c = Client::connect(s.addr).unwrap();
    let (a, b) = EVENT.split_at(10);
    let raw = format!(
        "{}{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        post_head(&key, "Transfer-Encoding: chunked\r\n"),
        a.len(),
        b.len()
    );
    c.send_raw(raw.as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 202);
    // The connection stays usable.
    let r = c.request("GET", "/health/live", &[], b"").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_chunked_body_over_the_limit_is_413_while_reading() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "chunked-big");
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(post_head(&key, "Transfer-Encoding: chunked\r\n").as_bytes())
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 100_000, "x".repeat(100_000));
    for _ in 0..3 {
        if c.send_raw(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_string()));
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn content_length_over_the_limit_is_413_before_the_body_is_sent() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "cl-big");
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(post_head(&key, "Content-Length: 300000\r\nX-Request-Id: big-1\r\n").as_bytes())
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_string()));
    // A refusal after the head was read answers under the client's request id.
    assert_eq!(r.header("x-request-id"), Some("big-1"));
    assert!(c.is_closed());
}

#[test]
fn expect_100_continue_gets_continue_then_the_answer() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "expect");
    let mut c = Client::connect(s.addr).unwrap();
    let head = post_head(
        &key,
        &format!(
            "Content-Length: {}\r\nExpect: 100-continue\r\n",
            EVENT.len()
        ),
    );
    c.send_raw(head.as_bytes()).unwrap();
    let cont = c.read_response().unwrap();
    assert_eq!(cont.status, 100);
    c.send_raw(EVENT.as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 202);
}

#[test]
fn ambiguous_lengths_are_400_and_close() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "smuggle");
    for extra in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x10\r\n",
    ] {
        let mut c = Client::connect(s.addr).unwrap();
        c.send_raw(format!("{}hello", post_head(&key, extra)).as_bytes())
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!(
            (r.status, r.code()),
            (400, "bad_request".to_string()),
            "{extra:?}"
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.is_closed(), "{extra:?}");
    }
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(post_head(&key, "Transfer-Encoding: gzip\r\n").as_bytes())
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 501);
}

#[test]
fn oversized_or_too_many_headers_are_431_and_garbage_is_400() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr).unwrap();
    let big = format!(
        "GET /health/live HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = c.send_raw(big.as_bytes());
    assert_eq!(c.read_response().unwrap().status, 431);

    let mut c = Client::connect(s.addr).unwrap();
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.send_raw(format!("GET /health/live HTTP/1.1\r\n{many}\r\n").as_bytes())
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 431);

    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 400);
}

#[test]
fn a_slow_head_is_408_and_an_idle_connection_is_closed() {
    let s = Server::start(&["--header-timeout-ms", "300", "--idle-timeout-ms", "500"]);
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET /health/live HTTP/1.1\r\nHost").unwrap();
    let started = Instant::now();
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.code()), (408, "request_timeout".to_string()));
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut idle = Client::connect(s.addr).unwrap();
    let started = Instant::now();
    assert!(idle.is_closed());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn http10_without_keep_alive_is_closed_after_the_answer() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"GET /health/live HTTP/1.0\r\n\r\n").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn connections_over_the_per_core_limit_get_503_and_close() {
    let s = Server::start(&["--cores", "1", "--connections-max", "2"]);
    let mut held: Vec<Client> = (0..2).map(|_| Client::connect(s.addr).unwrap()).collect();
    for c in &mut held {
        assert_eq!(
            c.request("GET", "/health/live", &[], b"").unwrap().status,
            200
        );
    }
    let mut extra = Client::connect(s.addr).unwrap();
    let r = extra.read_response().unwrap();
    assert_eq!((r.status, r.code()), (503, "overloaded".to_string()));
    assert!(r.header("retry-after").is_some());
    assert!(extra.is_closed());
    // A freed slot is usable again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(100));
    let mut again = Client::connect(s.addr).unwrap();
    assert_eq!(
        again
            .request("GET", "/health/live", &[], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_compressed_body_is_refused_415_from_the_head_and_identity_is_taken() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "coded");
    let mut c = Client::connect(s.addr).unwrap();
    let event = br#"{"type":"t","payload":{}}"#;
    for coding in ["gzip", "br", "identity, gzip"] {
        let r = c
            .request(
                "POST",
                "/api/events",
                &[("X-API-Key", &key), ("Content-Encoding", coding)],
                event,
            )
            .unwrap();
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_content_encoding".to_string()),
            "{coding}"
        );
        assert_eq!(r.header("accept-encoding"), Some("identity"));
    }
    // The small body was read and dropped: the connection still serves.
    let r = c
        .request(
            "POST",
            "/api/events",
            &[("X-API-Key", &key), ("Content-Encoding", "Identity")],
            event,
        )
        .unwrap();
    assert_eq!(r.status, 202);
}

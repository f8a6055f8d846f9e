//! Inbox pages, cursors, acknowledgement and tenant isolation, over real sockets against a real
//! PostgreSQL.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use testkit::*;

fn post_n(addr: std::net::SocketAddr, key: &str, n: usize, kind: &str) -> Vec<String> {
    let mut c = Client::connect(addr).unwrap();
    (0..n)
        .map(|i| {
            let body = json!({"type": kind, "payload": {"i": i}}).to_string();
            let r = c
                .request(
                    "POST",
                    "/api/events",
                    &[("X-API-Key", key)],
                    body.as_bytes(),
                )
                .unwrap();
            assert_eq!(r.status, 202);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect()
}

pub(crate) fn inbox(addr: std::net::SocketAddr, key: &str, query: &str) -> Value {
    let r = call(addr, "GET", &format!("/api/inbox{query}"), Some(key), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

pub(crate) fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn inbox_lists_pending_events_newest_first_with_every_field() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "inbox");
    let posted = post_n(s.addr, &key, 3, "a.b");
    let page = inbox(s.addr, &key, "");
    let mut newest_first = posted.clone();
    newest_first.reverse();
    assert_eq!(ids(&page), newest_first);
    assert_eq!(page["has_more"], false);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["limit"], 100);
    let e = &page["events"][0];
    assert_eq!(e["type"], "a.b");
    assert_eq!(e["payload"], json!({"i": 2}));
    assert_eq!(e["status"], "pending");
    assert_eq!(e["dedup_id"], Value::Null);
    assert_eq!(e["delivered_at"], Value::Null);
    assert!(e["created_at"].as_str().unwrap().ends_with('Z'));
    let asc = inbox(s.addr, &key, "?order=asc");
    assert_eq!(ids(&asc), posted);
}

#[test]
fn filters_by_type_and_status_and_bad_parameters_are_named() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "filters");
    let a = post_n(s.addr, &key, 3, "kind.a");
    let b = post_n(s.addr, &key, 2, "kind.b");
    assert_eq!(ids(&inbox(s.addr, &key, "?type=kind.b&order=asc")), b);
    let r = call(
        s.addr,
        "POST",
        &format!("/api/ack/{}", a[0]),
        Some(&key),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        ids(&inbox(s.addr, &key, "?status=delivered")),
        vec![a[0].clone()]
    );
    assert_eq!(ids(&inbox(s.addr, &key, "?status=pending")).len(), 4);
    assert_eq!(ids(&inbox(s.addr, &key, "?status=all")).len(), 5);
    assert_eq!(
        ids(&inbox(s.addr, &key, "?status=delivered&type=kind.b")).len(),
        0
    );
    assert_eq!(ids(&inbox(s.addr, &key, "?status=failed")).len(), 0);
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?status=nope", "status"),
        ("?cursor=bogus", "cursor"),
        ("?order=sideways", "order"),
        // PostgreSQL cannot compare text holding NUL: a bad parameter, not an outage.
        ("?type=%00", "type"),
        ("?type=a%00b", "type"),
    ] {
        let r = call(s.addr, "GET", &format!("/api/inbox{query}"), Some(&key), "");
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_parameter".to_string()),
            "{query}"
        );
        assert_eq!(r.json()["parameter"], param);
    }
    // Legacy offset paging.
    let all = ids(&inbox(s.addr, &key, "?status=all&order=asc"));
    assert_eq!(
        ids(&inbox(
            s.addr,
            &key,
            "?status=all&order=asc&limit=2&offset=2"
        )),
        all[2..4]
    );
}

#[test]
fn cursor_walks_see_every_event_once_while_new_ones_arrive() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "walk");
    let before: HashSet<String> = post_n(s.addr, &key, 120, "w").into_iter().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, key, stop) = (s.addr, key.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                post_n(addr, &key, 5, "w");
                n += 5;
            }
            n
        })
    };
    for order in ["desc", "asc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("?limit=7&order={order}&cursor={c}"),
                None => format!("?limit=7&order={order}"),
            };
            let page = inbox(s.addr, &key, &q);
            seen.extend(ids(&page));
            if page["has_more"] == false || (order == "asc" && seen.len() > 2000) {
                break;
            }
            cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{order}: an event came twice");
        for id in &before {
            assert!(unique.contains(id), "{order}: event {id} was skipped");
        }
        let mut sorted = seen.clone();
        sorted.sort();
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order}: pages out of order");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
}

#[test]
fn a_page_ends_at_its_byte_budget_and_the_cursor_walk_still_sees_every_event_once() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "big-pages");
    let big = "x".repeat(200 * 1024);
    let mut posted = Vec::new();
    for i in 0..40 {
        let body = format!(r#"{{"type":"big","payload":{{"i":{i},"pad":"{big}"}}}}"#);
        let r = post_event(s.addr, &key, &body);
        assert_eq!(r.status, 202);
        posted.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut query = "?limit=1000&order=asc".to_string();
    let mut pages = 0;
    loop {
        let r = call(s.addr, "GET", &format!("/api/inbox{query}"), Some(&key), "");
        assert_eq!(r.status, 200);
        // 4 MiB of payloads, plus the one that crossed the line.
        assert!(r.body.len() < 4_700_000, "a page of {} bytes", r.body.len());
        let page = r.json();
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=1000&order=asc&cursor={c}"),
            None => break,
        }
        assert_eq!(page["has_more"], true);
    }
    assert_eq!(seen, posted);
    assert!(pages >= 2, "{pages} pages");
}

#[test]
fn ack_is_idempotent_and_batch_ack_reports_what_it_did_not_find() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "ack");
    let posted = post_n(s.addr, &key, 3, "t");
    let first = call(
        s.addr,
        "POST",
        &format!("/api/ack/{}", posted[0]),
        Some(&key),
        "",
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["status"], "delivered");
    assert_eq!(first.json()["id"], posted[0]);
    let again = call(
        s.addr,
        "POST",
        &format!("/api/ack/{}", posted[0]),
        Some(&key),
        "",
    );
    assert_eq!(again.json(), first.json());

    let unknown = uuid::Uuid::now_v7().to_string();
    // Each id counts once, however often it is listed.
    let body = json!({"event_ids": [
        posted[1], posted[2], posted[0], posted[1], unknown, "not-a-uuid", unknown
    ]})
    .to_string();
    let r = call(s.addr, "POST", "/api/ack", Some(&key), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["acknowledged"], 3);
    assert_eq!(r.json()["not_found"], json!([unknown, "not-a-uuid"]));
    assert_eq!(ids(&inbox(s.addr, &key, "")).len(), 0);
    let page = inbox(s.addr, &key, "?status=delivered");
    assert!(page["events"][0]["delivered_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    for bad in [
        "{}",
        r#"{"event_ids":[]}"#,
        "nope",
        r#"{"event_ids":[7]}"#,
        r#"{"event_ids":[null]}"#,
    ] {
        assert_eq!(
            call(s.addr, "POST", "/api/ack", Some(&key), bad).status,
            400,
            "{bad}"
        );
    }
    let malformed = call(s.addr, "POST", "/api/ack/12345", Some(&key), "");
    assert_eq!(
        (malformed.status, malformed.code()),
        (404, "event_not_found".to_string())
    );
}

#[test]
fn organizations_cannot_see_ack_or_learn_of_each_others_events() {
    let s = Server::start(&[]);
    let (a, _) = new_org(s.addr, "tenant-a");
    let (b, _) = new_org(s.addr, "tenant-b");
    let a_ids = post_n(s.addr, &a, 2, "secret.thing");
    assert_eq!(ids(&inbox(s.addr, &b, "?status=all")).len(), 0);
    assert_eq!(
        ids(&inbox(s.addr, &b, "?type=secret.thing&status=all")).len(),
        0
    );
    // B acking A's event looks exactly like acking an id that does not exist.
    let theirs = call(
        s.addr,
        "POST",
        &format!("/api/ack/{}", a_ids[0]),
        Some(&b),
        "",
    );
    let nobody = call(
        s.addr,
        "POST",
        &format!("/api/ack/{}", uuid::Uuid::now_v7()),
        Some(&b),
        "",
    );
    assert_eq!(
        (theirs.status, theirs.body.clone()),
        (nobody.status, nobody.body.clone())
    );
    assert_eq!(theirs.status, 404);
    let batch = call(
        s.addr,
        "POST",
        "/api/ack",
        Some(&b),
        &json!({"event_ids": [a_ids[1]]}).to_string(),
    );
    assert_eq!(batch.json()["acknowledged"], 0);
    // A cursor carries no tenancy: B walking from A's position still sees only B's events.
    let a_page = inbox(s.addr, &a, "?limit=1");
    let cursor = a_page["next_cursor"].as_str().unwrap();
    assert_eq!(
        ids(&inbox(s.addr, &b, &format!("?cursor={cursor}&status=all"))).len(),
        0
    );
    // A's events are still pending.
    assert_eq!(ids(&inbox(s.addr, &a, "")).len(), 2);
}

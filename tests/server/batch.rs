//! `POST /api/events/batch`: per-item results in request order, one commit for the batch.

use serde_json::{json, Value};
use testkit::*;

#[test]
fn a_mixed_batch_answers_each_item_in_order_and_commits_once() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "batch");
    let earlier = post_event(
        s.addr,
        &key,
        r#"{"type":"t","payload":{},"dedup_id":"seen"}"#,
    );
    assert_eq!(earlier.status, 202);
    let body = json!({"events": [
        {"type": "a", "payload": {"n": 1}},
        {"type": "bad type", "payload": {}},
        {"type": "b", "payload": {"n": 2}, "dedup_id": "twice"},
        {"type": "b", "payload": {"n": 3}, "dedup_id": "twice"},
        {"type": "c", "payload": {}, "dedup_id": "seen"},
        {"type": "d", "payload": [1]},
        {"type": "e", "payload": {"n": 4}},
    ]})
    .to_string();
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["accepted"], 3);
    let res = j["results"].as_array().unwrap();
    let statuses: Vec<u64> = res.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [202, 400, 202, 409, 409, 400, 202]);
    assert_eq!(res[1]["code"], "invalid_event");
    assert!(res[1]["error"].as_str().unwrap().contains("type"));
    assert_eq!(
        res[3]["id"], res[2]["id"],
        "in-batch duplicate names the first"
    );
    assert_eq!(res[3]["code"], "duplicate_event");
    assert_eq!(res[4]["id"], earlier.json()["id"]);
    assert_eq!(res[5]["code"], "invalid_event");

    // One transaction: every accepted row carries the same xmin.
    let ids: Vec<uuid::Uuid> = [0, 2, 6]
        .iter()
        .map(|&i| res[i]["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut db = shared_cluster().client();
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT xmin::text) FROM events WHERE id = ANY($1)",
            &[&ids],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 1));
}

#[test]
fn batch_limits_are_enforced() {
    let s = Server::start(&[]);
    let (key, _) = new_org(s.addr, "batch-limits");
    let one = json!({"type": "t", "payload": {}});
    let too_many = json!({"events": vec![one.clone(); 1001]}).to_string();
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), &too_many);
    assert_eq!((r.status, r.code()), (400, "invalid_request".to_string()));
    let r = call(
        s.addr,
        "POST",
        "/api/events/batch",
        Some(&key),
        r#"{"events":[]}"#,
    );
    assert_eq!(r.status, 400);
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), "{oops");
    assert_eq!((r.status, r.code()), (400, "invalid_json".to_string()));
    let full = json!({"events": vec![one; 1000]}).to_string();
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), &full);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], 1000);
    let big = json!({"events": [{"type": "t", "payload": {"s": "x".repeat(6 * 1024 * 1024)}}]})
        .to_string();
    let r = call(s.addr, "POST", "/api/events/batch", Some(&key), &big);
    assert_eq!((r.status, r.code()), (413, "payload_too_large".to_string()));
    let no_key = call(
        s.addr,
        "POST",
        "/api/events/batch",
        None,
        r#"{"events":[]}"#,
    );
    assert_eq!(no_key.status, 401);
    let _: Value = no_key.json();
}

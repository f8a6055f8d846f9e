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

/// A batch's skipped rows are matched to the events holding their dedup_ids with a plan for
/// the table as it is: a prepared lookup settles on a generic plan, and one made while
/// `event_dedup` was nearly empty reads the whole table for every later lookup.
#[test]
fn looking_up_skipped_rows_reads_only_their_events_however_the_table_has_grown() {
    use std::time::{Duration, SystemTime};
    use triggers::db::events::{EventRow, JsonText, Writer};
    use triggers::db::partitions::Upkeep;
    use triggers::ids::{EventId, OrgId};

    struct Row(EventRow);
    impl AsRef<EventRow> for Row {
        fn as_ref(&self) -> &EventRow {
            &self.0
        }
    }
    let row = |org: OrgId, dedup: Option<String>| {
        Row(EventRow {
            org,
            id: EventId::new_v7(),
            created_at: SystemTime::now(),
            kind: "t".into(),
            dedup_id: dedup.map(Into::into),
            payload: JsonText(b"{}".to_vec().into()),
            keep_days: 1,
        })
    };
    let config: postgres::Config = shared_cluster()
        .new_database("lookup_plans")
        .parse()
        .unwrap();
    triggers::db::migrate(&config).unwrap();
    let day = Upkeep::new(&[1], Duration::from_secs(86_400));
    triggers::db::partitions::upkeep_at_start(&config, &day).unwrap();
    let mut writer = Writer::open(&config).unwrap();
    let mut other = config.connect(postgres::NoTls).unwrap();
    let org = OrgId::new();
    // Ten batches of the same 200 dedup_ids while `events` holds only them: the last nine
    // are all skipped and looked up, past the five runs after which PostgreSQL may settle on
    // a generic plan.
    let same: Vec<String> = (0..200).map(|i| format!("early-{i}")).collect();
    for _ in 0..10 {
        let batch: Vec<Row> = same.iter().map(|d| row(org, Some(d.clone()))).collect();
        writer.write(&batch, false, None).unwrap();
    }
    // Then the table grows (not yet analyzed). The lookup reads only `event_dedup`.
    other
        .execute(
            "INSERT INTO event_dedup (org_id, dedup_id, event_id, keep_days)
             SELECT $1, 'later-' || g, gen_random_uuid(), 1
             FROM generate_series(1, 50000) g",
            &[&org],
        )
        .unwrap();
    // Sequential scans of `event_dedup`, once the writer's backend has reported its own: it
    // reports when it goes idle at least a second after its last report, so a second's wait
    // and one plain write (which scans nothing) bring them in.
    let mut scans = |writer: &mut Writer| -> i64 {
        std::thread::sleep(Duration::from_millis(1100));
        writer.write(&[row(org, None)], false, None).unwrap();
        other
            .query_one(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'event_dedup'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = scans(&mut writer);
    let batch: Vec<Row> = (1..=100)
        .map(|i| row(org, Some(format!("later-{i}"))))
        .collect();
    let written = writer.write(&batch, false, None).unwrap();
    assert_eq!(scans(&mut writer), before, "a lookup scanned the table");
    // Each skipped row found its holder.
    let held: i64 = other
        .query_one(
            "SELECT count(*) FROM event_dedup WHERE dedup_id LIKE 'later-%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 50_000);
    assert!(written.iter().all(|w| matches!(
        w,
        triggers::db::events::Written::Skipped { holder: Some(_) }
    )));
}

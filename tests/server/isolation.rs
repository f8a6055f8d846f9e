//! Isolation of shared work: nothing one tenant or one webhook receiver does stops the others.
//! Each test plays the attacker (or the careless tenant) beside a victim tenant, on the real
//! server and a real PostgreSQL, and holds the victim's service to its bound.

use std::time::{Duration, Instant};

use testkit::*;

use crate::webhooks::{attempts, configure, on, post, start, wait_status};

#[test]
fn a_receiver_answer_postgres_cannot_store_fails_no_other_tenants_deliveries() {
    let mut s = start(&["--shutdown-timeout-ms", "5000"]);
    // Two poisoned receivers: a 200 and a 500 whose bodies hold NUL, which a PostgreSQL text
    // column refuses.
    let ok_nul = Receiver::start();
    ok_nul.answer(|_, _| Reply::Status(200, Vec::new(), "ok\0ok".into()));
    let err_nul = Receiver::start();
    err_nul.answer(|_, _| Reply::Status(500, Vec::new(), "bad\0news".into()));
    let victim_rx = Receiver::start();
    let (poison_ok, _) = new_org(s.addr, "poison-ok");
    let (poison_err, _) = new_org(s.addr, "poison-err");
    let (victim, _) = new_org(s.addr, "victim");
    configure(s.addr, &poison_ok, &ok_nul.url());
    configure(s.addr, &poison_err, &err_nul.url());
    configure(s.addr, &victim, &victim_rx.url());
    let poisoned_ok = post(s.addr, &poison_ok, "t", 1);
    let poisoned_err = post(s.addr, &poison_err, "t", 1);
    ok_nul.wait_for(Duration::from_secs(10), "the poisoned answer", |g| {
        !g.is_empty()
    });
    err_nul.wait_for(Duration::from_secs(10), "the poisoned answer", |g| {
        !g.is_empty()
    });
    // The victim's events, posted after the poison is in the store's hands, are delivered
    // and marked within 2 s each.
    let ids: Vec<String> = (0..20).map(|n| post(s.addr, &victim, "v", n)).collect();
    let posted = Instant::now();
    for id in &ids {
        wait_status(s.addr, &victim, id, "delivered");
    }
    assert!(
        posted.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
        "the victim's events were marked {:?} after they were posted",
        posted.elapsed()
    );
    for id in &ids {
        assert_eq!(attempts(s.addr, &victim, id).len(), 1, "{id}");
    }
    // The poisoned tenants' own outcomes are recorded too, their answers kept with the NUL
    // replaced, and each receiver got its event once.
    wait_status(s.addr, &poison_ok, &poisoned_ok, "delivered");
    let a = attempts(s.addr, &poison_ok, &poisoned_ok);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["response"], "ok\u{fffd}ok");
    let a = attempts(s.addr, &poison_err, &poisoned_err);
    assert!(!a.is_empty() && a[0]["status_code"] == 500, "{a:?}");
    assert_eq!(a[0]["response"], "bad\u{fffd}news");
    assert_eq!(ok_nul.received().len(), 1);
    // And a stop completes within its budget.
    let stopping = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "stopped after {:?}",
        stopping.elapsed()
    );
}

#[test]
fn an_outcome_postgres_refuses_is_recorded_alone_and_fails_no_other_tenants_outcomes() {
    // What PostgreSQL refuses is not only NUL: here a rule of the database's own (a CHECK the
    // test adds) refuses one tenant's answers. That tenant's outcome is recorded on its own,
    // without the answer's text; every other outcome of its batch is recorded as it was.
    let url = shared_cluster().new_database("hooks");
    let s = on(&url, &[]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.batch_execute(
        "ALTER TABLE delivery_attempts ADD CONSTRAINT refuses_poison
         CHECK (response IS NULL OR response NOT LIKE '%poison%')",
    )
    .unwrap();
    let poison = Receiver::start();
    poison.answer(|_, _| Reply::Status(200, Vec::new(), "poison".into()));
    let victim_rx = Receiver::start();
    let (poison_key, _) = new_org(s.addr, "refused");
    let (victim, _) = new_org(s.addr, "victim");
    configure(s.addr, &poison_key, &poison.url());
    configure(s.addr, &victim, &victim_rx.url());
    // Interleaved, so that outcomes of both share batches.
    let mut ids = Vec::new();
    let mut poisoned = Vec::new();
    for n in 0..20 {
        poisoned.push(post(s.addr, &poison_key, "p", n));
        ids.push(post(s.addr, &victim, "v", n));
    }
    for id in &ids {
        wait_status(s.addr, &victim, id, "delivered");
        let a = attempts(s.addr, &victim, id);
        assert_eq!((a.len(), &a[0]["response"]), (1, &"ok".into()), "{a:?}");
    }
    for id in &poisoned {
        wait_status(s.addr, &poison_key, id, "delivered");
        let a = attempts(s.addr, &poison_key, id);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (&a[0]["status_code"], &a[0]["error"], &a[0]["response"]),
            (
                &200.into(),
                &"unstorable_answer".into(),
                &serde_json::Value::Null
            ),
        );
    }
    assert_eq!(poison.received().len(), 20, "each poisoned event sent once");
    let stats = call(s.addr, "GET", "/api/queue/stats", None, "").json();
    assert_eq!(stats["webhook_delivery"]["unstorable_outcomes"], 20);
}

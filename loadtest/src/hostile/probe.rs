//! loadtest::hostile::probe: the victim's other kinds of service, measured in the same window
//! as its ingest, on an organization of its own. Attacks on shared work (the query threads, the
//! delivery queue) show here before, or instead of, in ingest:
//!
//! - reads: `GET /api/inbox?limit=10`, then `GET /health`, every 20 ms on one keep-alive
//!   connection. The inbox is timed from when it was due, and the ticks a slow answer made it
//!   miss are filled in as a queue behind it would have been answered (HdrHistogram's
//!   coordinated-omission correction) rather than sent late: a stalled server shows in full,
//!   and the probe still ends with its window;
//! - delivery, in the rows that measure it: an event posted every 50 ms on a connection of its
//!   own, each timed from its post to its first arrival at the victim's endpoint (matched by
//!   `webhook-id`, the id the 202 answered), then up to 5 s for those still to come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::receiver::Seen;
use crate::client::{Conn, Target};
use crate::run::new_histogram;

/// How often the reads are due.
const READ_EVERY: Duration = Duration::from_millis(20);
/// How often an event to be delivered is posted.
const POST_EVERY: Duration = Duration::from_millis(50);
/// How long after the window the deliveries still to come are waited for.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);
/// How often the endpoint's arrivals are looked at meanwhile.
const DELIVERY_POLL: Duration = Duration::from_millis(50);
/// The inbox page the victim reads: small, its own events (what a dashboard asks for).
const INBOX_PATH: &str = "/api/inbox?limit=10";
const PROBE_EVENT: &str = r#"{"type":"probe","payload":{"n":1}}"#;

/// What the probe measured in one row.
pub struct Measured {
    /// `GET /api/inbox`, each from when it was due, the ticks it missed filled in.
    pub inbox: Histogram<u64>,
    /// `GET /health`, each from when it was sent (right after the inbox's answer).
    pub health: Histogram<u64>,
    /// Requests sent, reads and posts.
    pub requests: u64,
    /// Requests not answered 2xx, failed ones included.
    pub non_2xx: u64,
    /// Delivery, in the rows that measure it.
    pub delivery: Option<Delivery>,
}

pub struct Delivery {
    /// From each event's post to its first arrival, for those that arrived.
    pub latency: Histogram<u64>,
    /// Events accepted (202), whose delivery was waited for.
    pub posted: u64,
    /// Of those, events that had not arrived `DELIVERY_WAIT` after the window.
    pub undelivered: u64,
}

/// Sends one request on `conn`, connecting first when there is none; its status, or `None`
/// when it failed (the connection is then dropped, and the next request opens another).
async fn send(
    conn: &mut Option<Conn>,
    target: &Target,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    if conn.is_none() {
        *conn = Conn::connect(target).await.ok();
    }
    match conn.as_mut()?.request(method, path, key, body).await {
        Ok(r) => Some((r.status, r.body)),
        Err(_) => {
            *conn = None;
            None
        }
    }
}

fn is_2xx(answer: &Option<(u16, Vec<u8>)>) -> bool {
    matches!(answer, Some((s, _)) if (200..300).contains(s))
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The first tick after `due`, `every` apart, that has not passed.
fn next_tick(mut due: Instant, every: Duration) -> Instant {
    let now = Instant::now();
    due += every;
    while due < now {
        due += every;
    }
    due
}

/// The reads, due every `READ_EVERY` from `start` until `end`.
async fn reads(target: &Target, key: &str, start: Instant, end: Instant) -> Measured {
    let mut m = Measured {
        inbox: new_histogram(),
        health: new_histogram(),
        requests: 0,
        non_2xx: 0,
        delivery: None,
    };
    let mut conn = None;
    let mut due = start;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let inbox = send(&mut conn, target, "GET", INBOX_PATH, Some(key), b"").await;
        let took = micros(due.elapsed()).min(m.inbox.high());
        let _ = m.inbox.record_correct(took, micros(READ_EVERY));
        let sent = Instant::now();
        let health = send(&mut conn, target, "GET", "/health", None, b"").await;
        m.health.saturating_record(micros(sent.elapsed()));
        m.requests += 2;
        m.non_2xx += u64::from(!is_2xx(&inbox)) + u64::from(!is_2xx(&health));
        due = next_tick(due, READ_EVERY);
    }
    m
}

/// Events posted every `POST_EVERY` from `start` until `end` (ticks missed while an answer was
/// slow are skipped): (id, when it was sent) of each accepted, and the requests sent and not
/// answered 2xx.
async fn posts(
    target: &Target,
    key: &str,
    start: Instant,
    end: Instant,
) -> (Vec<(String, Instant)>, u64, u64) {
    let (mut accepted, mut requests, mut non_2xx) = (Vec::new(), 0, 0);
    let mut conn = None;
    let mut due = start;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        let answer = send(
            &mut conn,
            target,
            "POST",
            "/api/events",
            Some(key),
            PROBE_EVENT.as_bytes(),
        )
        .await;
        requests += 1;
        let id = match &answer {
            Some((202, body)) => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string)),
            _ => None,
        };
        match id {
            Some(id) => accepted.push((id, sent)),
            None => non_2xx += u64::from(!is_2xx(&answer)),
        }
        due = next_tick(due, POST_EVERY);
    }
    (accepted, requests, non_2xx)
}

/// Waits up to `DELIVERY_WAIT` for the events `posted` to arrive at `endpoint`; their latency
/// and how many never did.
async fn delivered(endpoint: &Seen, posted: &[(String, Instant)]) -> Delivery {
    let give_up = Instant::now() + DELIVERY_WAIT;
    while Instant::now() < give_up && posted.iter().any(|(id, _)| endpoint.arrival(id).is_none()) {
        tokio::time::sleep(DELIVERY_POLL).await;
    }
    let mut latency = new_histogram();
    let mut undelivered = 0;
    for (id, sent) in posted {
        match endpoint.arrival(id) {
            Some(at) => latency.saturating_record(micros(at.saturating_duration_since(*sent))),
            None => undelivered += 1,
        }
    }
    Delivery {
        latency,
        posted: posted.len() as u64,
        undelivered,
    }
}

/// Probes from `start` until `end` with the victim's `key`; with `endpoint` (the victim's
/// webhook endpoint), delivery too.
pub async fn measure(
    target: &Target,
    key: &str,
    endpoint: Option<Arc<Seen>>,
    start: Instant,
    end: Instant,
) -> Measured {
    let posting = async {
        match &endpoint {
            Some(_) => Some(posts(target, key, start, end).await),
            None => None,
        }
    };
    let (mut m, posted) = tokio::join!(reads(target, key, start, end), posting);
    if let (Some(endpoint), Some((accepted, requests, non_2xx))) = (endpoint, posted) {
        m.requests += requests;
        m.non_2xx += non_2xx;
        m.delivery = Some(delivered(&endpoint, &accepted).await);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_probe_goes_on_at_the_next_tick_not_through_the_ones_it_missed() {
        let every = Duration::from_millis(20);
        let before = Instant::now();
        let next = next_tick(before - Duration::from_millis(101), every);
        assert!(next >= before && next <= Instant::now() + every, "{next:?}");
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(next_tick(soon, every), soon + every);
    }
}

//! scenario: what each scenario sends. Bodies are formatted, not built as JSON values: the
//! generator shares the machine with the server, so its own cost per request has to stay small.

use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// POST /api/events spread over many organizations
    Ingest,
    /// POST /api/events, all from one organization
    HotTenant,
    /// POST /api/events/batch with --batch-size events each
    Batch,
    /// 70% ingest, 20% inbox reads, 10% acks (the earlier implementations' benchmark mix)
    Mixed,
}

/// One request of a scenario, and the organization whose key it carries.
pub struct Request {
    pub org: usize,
    pub method: &'static str,
    pub path: String,
    pub body: String,
}

/// Events a mixed run may ack later, with the organization that owns each: acked with another
/// organization's key, an event is a 404.
pub type Owned = Vec<(usize, String)>;
/// Most ids a connection keeps for later acks.
const OWNED_MAX: usize = 1000;

/// An event's payload of about `bytes` bytes (at least the fixed fields, ~110).
pub fn payload(i: u64, bytes: usize) -> String {
    let head = format!(
        r#"{{"order_id":{i},"customer":"c-{}","amount_cents":4999,"currency":"EUR","items":[{{"sku":"A-1","qty":2}}],"note":""#,
        i % 1000
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Event `n`; with `dedup`, it carries a dedup_id of its own: `d-{run}-{n}`, `run` telling
/// apart the runs of one process that share organizations (a warm-up and the run after it, a
/// sweep's steps).
fn event(n: u64, payload_bytes: usize, dedup: Option<u64>) -> String {
    let payload = payload(n, payload_bytes);
    match dedup {
        Some(run) => {
            format!(r#"{{"type":"order.created","payload":{payload},"dedup_id":"d-{run}-{n}"}}"#)
        }
        None => format!(r#"{{"type":"order.created","payload":{payload}}}"#),
    }
}

/// The shape of a run's requests.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub scenario: Scenario,
    pub orgs: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub batch_size: usize,
    /// Every event carries a dedup_id of its own, made unique by this run number.
    pub dedup: Option<u64>,
}

impl Shape {
    pub fn events_per_request(&self) -> usize {
        match self.scenario {
            Scenario::Batch => self.batch_size,
            _ => 1,
        }
    }

    /// Request `i` of the run, sent on connection `c`.
    pub fn request(&self, i: u64, c: usize, owned: &mut Owned) -> Request {
        let org = match self.scenario {
            Scenario::HotTenant => 0,
            _ => (i as usize / self.connections + c) % self.orgs,
        };
        let post = |path: &str, body: String| Request {
            org,
            method: "POST",
            path: path.to_string(),
            body,
        };
        match self.scenario {
            Scenario::Ingest | Scenario::HotTenant => {
                post("/api/events", event(i, self.payload_bytes, self.dedup))
            }
            Scenario::Batch => {
                let events: Vec<String> = (0..self.batch_size as u64)
                    .map(|k| event(i * 1000 + k, self.payload_bytes, self.dedup))
                    .collect();
                post(
                    "/api/events/batch",
                    format!(r#"{{"events":[{}]}}"#, events.join(",")),
                )
            }
            Scenario::Mixed => match i % 10 {
                0 if !owned.is_empty() => {
                    let (owner, id) = owned.swap_remove(0);
                    Request {
                        org: owner,
                        method: "POST",
                        path: format!("/api/ack/{id}"),
                        body: String::new(),
                    }
                }
                1 | 2 => Request {
                    org,
                    method: "GET",
                    path: "/api/inbox?limit=50".to_string(),
                    body: String::new(),
                },
                _ => post("/api/events", event(i, self.payload_bytes, self.dedup)),
            },
        }
    }

    /// Whether the ids a response accepted are needed: to verify them, or to ack them later.
    pub fn wants_ids(&self, verify: bool) -> bool {
        verify || self.scenario == Scenario::Mixed
    }

    /// The ids of the events a response accepted: a 202's `id`, or a batch's 202 items.
    pub fn accepted_ids(&self, status: u16, body: &[u8]) -> Vec<String> {
        let accepted = status == 202 || (status == 200 && self.scenario == Scenario::Batch);
        if !accepted {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match &v["results"] {
            Value::Array(items) => items
                .iter()
                .filter(|x| x["status"] == 202)
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect(),
            _ => v["id"].as_str().map(str::to_string).into_iter().collect(),
        }
    }

    /// Keeps `ids` of `org` for later acks (mixed runs only).
    pub fn own(&self, owned: &mut Owned, org: usize, ids: &[String]) {
        if self.scenario == Scenario::Mixed {
            owned.extend(ids.iter().map(|id| (org, id.clone())));
            owned.truncate(OWNED_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_objects_of_about_the_asked_size() {
        for size in [300, 2000] {
            let p = payload(7, size);
            let v: Value = serde_json::from_str(&p).unwrap();
            assert!(v.is_object());
            assert!(
                p.len() >= size - 2 && p.len() <= size + 2,
                "{} vs {size}",
                p.len()
            );
        }
        // Below the fixed fields' size the payload is just those fields.
        assert!(payload(7, 10).len() < 120);
    }

    #[test]
    fn mixed_runs_ack_their_own_events_with_their_owners_key() {
        let shape = Shape {
            scenario: Scenario::Mixed,
            orgs: 3,
            connections: 2,
            payload_bytes: 200,
            dedup: None,
            batch_size: 1,
        };
        let mut owned = Owned::new();
        let first = shape.request(3, 0, &mut owned);
        assert_eq!((first.method, first.path.as_str()), ("POST", "/api/events"));
        let ids = shape.accepted_ids(202, br#"{"id":"e-1","status":"accepted"}"#);
        shape.own(&mut owned, 2, &ids);
        let ack = shape.request(10, 1, &mut owned);
        assert_eq!((ack.org, ack.path.as_str()), (2, "/api/ack/e-1"));
        assert!(owned.is_empty());
    }

    #[test]
    fn a_batch_answer_yields_the_ids_of_its_accepted_items() {
        let shape = Shape {
            scenario: Scenario::Batch,
            orgs: 1,
            connections: 1,
            payload_bytes: 200,
            dedup: None,
            batch_size: 3,
        };
        let body = br#"{"accepted":2,"results":[{"status":202,"id":"a"},{"status":409,"id":"b"},{"status":202,"id":"c"}]}"#;
        assert_eq!(shape.accepted_ids(200, body), ["a", "c"]);
        assert!(shape.accepted_ids(503, body).is_empty());
    }
}

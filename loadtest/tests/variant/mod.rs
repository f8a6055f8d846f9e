//! A small server that speaks the contract the way the earlier implementations do, so that the
//! load generator's tests can show it copes with them: an unknown tier either accepted, echoed
//! and limited to 100 events a minute (the earlier Rust one) or refused 422 (the Python one);
//! `status=all` refused 422; ids answered that the inbox never lists, each event stored three
//! times under other ids (the Rust one). Like both, key generation does not say the limit and
//! `GET /api/keys` does. Everything is held in memory; HTTP/1.1 keep-alive with
//! `Content-Length` bodies, a thread per connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

/// How this server departs from the contract.
#[derive(Clone, Copy, Default)]
pub struct Quirks {
    /// An unknown tier is accepted, echoed, and limited like `free`; without this it is 422.
    pub unknown_tier_as_free: bool,
    /// `GET /api/inbox?status=all` is 422.
    pub no_status_all: bool,
    /// Each event is stored three times under ids other than the one answered.
    pub ids_not_stored: bool,
    /// Events 5 to 24 are answered 200 ms late, once: a hiccup of a noisy machine.
    pub stall_once: bool,
}

const TIERS: [(&str, f64); 4] = [
    ("free", 100.0),
    ("pro", 1_000.0),
    ("business", 10_000.0),
    ("enterprise", 100_000.0),
];

struct Org {
    /// Events per minute; the bucket holds as many.
    limit: f64,
    tokens: f64,
    filled_at: Instant,
    events: Vec<String>,
}

#[derive(Default)]
struct State {
    orgs: HashMap<String, Org>,
    next: u64,
    /// Events posted so far.
    events: u64,
}

pub struct Variant {
    pub addr: SocketAddr,
}

impl Variant {
    pub fn start(quirks: Quirks) -> Variant {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let state = state.clone();
                std::thread::spawn(move || serve(stream, quirks, &state));
            }
        });
        Variant { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(mut stream: TcpStream, quirks: Quirks, state: &Mutex<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // One request: its head, then `Content-Length` bytes of body.
        let (method, path, key, body_at, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                };
                let length = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    header("x-api-key"),
                    head,
                    length,
                );
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < body_at + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[body_at..body_at + length]).unwrap_or(Value::Null);
        buf.drain(..body_at + length);
        let (status, extra, answer, events) = {
            let mut state = state.lock().unwrap();
            let answer = answer(&mut state, quirks, &method, &path, key.as_deref(), &body);
            (answer.0, answer.1, answer.2, state.events)
        };
        if quirks.stall_once && path == "/api/events" && (5..25).contains(&events) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let answer = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            answer.len()
        );
        if stream.write_all(head.as_bytes()).is_err()
            || stream.write_all(answer.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// The answer to one request: status, extra header lines, body.
fn answer(
    state: &mut State,
    quirks: Quirks,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, String, Value) {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let refused = |detail: &str| (422, String::new(), json!({"detail": detail}));
    match (method, route) {
        ("GET", "/health") => (
            200,
            String::new(),
            json!({"status": "ok", "version": "variant"}),
        ),
        ("POST", "/api/keys/generate") => {
            let tier = body["tier"].as_str().unwrap_or("free").to_string();
            let limit = match TIERS.iter().find(|(t, _)| *t == tier) {
                Some((_, limit)) => *limit,
                None if quirks.unknown_tier_as_free => 100.0,
                None => return refused("tier: unknown"),
            };
            state.next += 1;
            let key = format!("key-{}", state.next);
            state.orgs.insert(
                key.clone(),
                Org {
                    limit,
                    tokens: limit,
                    filled_at: Instant::now(),
                    events: Vec::new(),
                },
            );
            (
                201,
                String::new(),
                json!({"api_key": key, "organization_id": format!("org-{}", state.next),
                       "organization_name": body["organization_name"], "tier": tier}),
            )
        }
        ("GET", "/api/keys") => match key.and_then(|k| state.orgs.get(k)) {
            Some(org) => (
                200,
                String::new(),
                json!({"rate_limit_per_minute": org.limit as u64}),
            ),
            None => (401, String::new(), json!({"detail": "invalid key"})),
        },
        ("POST", "/api/events") => {
            state.events += 1;
            state.next += 1;
            let n = state.next;
            let Some(org) = key.and_then(|k| state.orgs.get_mut(k)) else {
                return (401, String::new(), json!({"detail": "invalid key"}));
            };
            let now = Instant::now();
            let refill = now.duration_since(org.filled_at).as_secs_f64() * org.limit / 60.0;
            org.tokens = (org.tokens + refill).min(org.limit);
            org.filled_at = now;
            if org.tokens < 1.0 {
                return (
                    429,
                    "Retry-After: 1\r\n".into(),
                    json!({"detail": "rate limited"}),
                );
            }
            org.tokens -= 1.0;
            let id = format!("evt-{n}");
            if quirks.ids_not_stored {
                org.events.extend((0..3).map(|k| format!("stored-{n}-{k}")));
            } else {
                org.events.push(id.clone());
            }
            (202, String::new(), json!({"id": id, "status": "accepted"}))
        }
        ("GET", "/api/inbox") => {
            let Some(org) = key.and_then(|k| state.orgs.get(k)) else {
                return (401, String::new(), json!({"detail": "invalid key"}));
            };
            if quirks.no_status_all && param("status").as_deref() == Some("all") {
                return refused("status: not one of pending, delivered, failed");
            }
            // Nothing is ever acknowledged here: every event is pending.
            if param("status").is_some_and(|s| s != "pending" && s != "all") {
                return (200, String::new(), json!({"events": [], "has_more": false}));
            }
            let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            let from: usize = param("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
            let page: Vec<Value> = org
                .events
                .iter()
                .skip(from)
                .take(limit)
                .map(|id| json!({"id": id, "status": "pending"}))
                .collect();
            let next = from + page.len();
            let has_more = next < org.events.len();
            (
                200,
                String::new(),
                json!({"events": page, "has_more": has_more,
                       "next_cursor": has_more.then(|| next.to_string())}),
            )
        }
        ("POST", r) if r.starts_with("/api/ack/") => (200, String::new(), json!({"status": "ok"})),
        _ => (404, String::new(), json!({"detail": "Not Found"})),
    }
}

//! loadtest::hostile::receiver: the webhook endpoints `hostile` runs itself, each on a runtime
//! of its own (it stands for another machine): the victim's, which answers 200 and notes when
//! each event first arrived, and the attackers', which answer as their shape needs. Signatures
//! are not checked: `loadtest webhook` does that; here only arrival times and answers matter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::side::{self, Side};
use crate::webhook::read_request;

/// How an endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answering {
    /// 200 to every delivery, each event's first arrival noted (the victim's).
    Victim,
    /// 200 `ok\0ok` and 500 `bad\0news` in turn: a NUL byte in every answer's text, which
    /// PostgreSQL's `text` refuses; kept as it came, one would fail the whole batch of outcomes
    /// recorded with it, the victim's among them.
    Poison,
    /// 500 to every delivery, so each is retried.
    Failing,
}

/// What an endpoint saw, shared with its connections.
pub struct Seen {
    answering: Answering,
    requests: AtomicU64,
    /// First arrival of each `webhook-id` (the victim's endpoint only).
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl Seen {
    /// When the event `id` first arrived, if it has.
    pub fn arrival(&self, id: &str) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(id).copied()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The answer to request `n`: status and body.
    fn answer(&self, n: u64) -> (u16, &'static [u8]) {
        match self.answering {
            Answering::Victim => (200, b"ok"),
            Answering::Poison if n.is_multiple_of(2) => (200, b"ok\0ok"),
            Answering::Poison => (500, b"bad\0news"),
            Answering::Failing => (500, b"failing on purpose"),
        }
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut buf = Vec::new();
        while let Ok(req) = read_request(&mut stream, &mut buf).await {
            let n = self.requests.fetch_add(1, Ordering::Relaxed);
            if self.answering == Answering::Victim {
                if let Some(id) = req.headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    let now = Instant::now();
                    self.arrivals
                        .lock()
                        .unwrap()
                        .entry(id.to_string())
                        .or_insert(now);
                }
            }
            let (status, body) = self.answer(n);
            let mut answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(body);
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

/// A running endpoint: it answers at `url` until dropped.
pub struct Endpoint {
    pub url: String,
    pub seen: Arc<Seen>,
    /// Dropping it ends the listener and every connection (later deliveries are refused).
    _rt: Side,
}

/// Starts an endpoint answering so on 127.0.0.1 (the server must accept loopback webhooks:
/// `--webhook-allow-private true`), on a runtime named `name` at niceness `nice`, pinned to
/// `cpu` when given.
pub fn start(
    answering: Answering,
    name: &'static str,
    nice: i32,
    cpu: Option<usize>,
) -> anyhow::Result<Endpoint> {
    let rt = side::runtime(name, nice, cpu)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let seen = Arc::new(Seen {
        answering,
        requests: AtomicU64::new(0),
        arrivals: Mutex::default(),
    });
    {
        let seen = seen.clone();
        crate::webhook::accept_each(&rt, listener, move |stream| seen.clone().serve(stream))?;
    }
    Ok(Endpoint { url, seen, _rt: rt })
}

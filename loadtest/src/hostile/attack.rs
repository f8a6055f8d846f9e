//! loadtest::hostile::attack: the attack shapes, each a loop per attacker connection:
//! connect, misbehave, record the answer (its status, or `closed` / `no answer` / `refused` /
//! `reset`), again until the row's end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Target;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// A request head sent one byte every 500 ms, never finished
    Slowloris,
    /// Connections opened and left idle (`--idle-connections` of them)
    Idle,
    /// 100 pipelined requests per write, answers read
    Pipeline,
    /// Request-smuggling framings: CL with TE, two CLs, unknown codings, obs-fold, ...
    Smuggle,
    /// A chunk extension that never ends, sent as fast as the server reads
    ChunkExtension,
    /// A chunked body of valid chunks that keeps arriving
    EndlessBody,
    /// A 4 MB batch announced without a key
    NoKeyBigBody,
    /// 5 MiB batches announced with a key and sent at 1 KB/s
    SlowBatches,
    /// Inbox pages of large events, requested and never read
    BigPages,
    /// Batches of values PostgreSQL's jsonb refuses (1e999999)
    RefusedValues,
    /// Well-formed keys the server never issued
    UnknownKeys,
    /// Self-serve signups as fast as possible (last: it spends this address's signups, which
    /// the victim's runs need)
    Signup,
}

/// What attackers were answered: status (or `closed`, `no answer`, ...) → count.
pub type Answers = Arc<Mutex<BTreeMap<String, u64>>>;

fn record(answers: &Answers, what: impl Into<String>) {
    *answers.lock().unwrap().entry(what.into()).or_default() += 1;
}

/// The status of the first response in `buf`, once its status line is there.
fn status_of(buf: &[u8]) -> Option<String> {
    let line = buf.split(|&b| b == b'\n').next()?;
    if !buf.contains(&b'\n') {
        return None;
    }
    let code = line.split(|&b| b == b' ').nth(1)?;
    Some(String::from_utf8_lossy(code).into_owned())
}

/// Reads until the first response's status line arrives (its status), the server closes
/// (`closed`) or `until` passes (`no answer`).
async fn first_status(stream: &mut tokio::net::tcp::OwnedReadHalf, until: Instant) -> String {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(status) = status_of(&buf) {
            return status;
        }
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout_at(until.into(), stream.read(&mut chunk)).await;
        match read {
            Err(_) => return "no answer".into(),
            Ok(Ok(0)) => return "closed".into(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return "reset".into(),
        }
    }
}

/// Sends `head`, then `piece` every `every` (as fast as the server reads when zero) until the
/// server answers or `until`; returns the answer. With `hold`, the connection stays open
/// (and unread past the answer's status line) until `until`.
async fn send_and_drip(
    target: &Target,
    head: Vec<u8>,
    piece: Vec<u8>,
    every: Duration,
    until: Instant,
    hold: bool,
) -> String {
    let Ok(stream) = TcpStream::connect(target.addr).await else {
        return "refused".into();
    };
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(&head).await.is_err() {
            return;
        }
        while !piece.is_empty() && Instant::now() < until && write.write_all(&piece).await.is_ok() {
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
        // Held open until the end: a slow client does not go away.
        tokio::time::sleep_until(until.into()).await;
        drop(write);
    });
    let answer = first_status(&mut read, until).await;
    if hold {
        tokio::time::sleep_until(until.into()).await;
    }
    writer.abort();
    answer
}

/// One whole request on a fresh connection; its answer.
async fn send_once(target: &Target, request: &[u8], until: Instant) -> String {
    send_and_drip(
        target,
        request.to_vec(),
        Vec::new(),
        Duration::ZERO,
        until,
        false,
    )
    .await
}

/// The smuggling framings: each must be refused and its connection closed.
fn smuggling_requests(host: &str, key: &str) -> Vec<Vec<u8>> {
    let head = |fields: &str, body: &str| {
        format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n{fields}\r\n{body}GET /health/live HTTP/1.1\r\nHost: {host}\r\n\r\n")
            .into_bytes()
    };
    vec![
        head(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        head(
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            "0\r\n\r\n",
        ),
        head("Content-Length: 4\r\nContent-Length: 5\r\n", "abcd"),
        head("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
        head("Content-Length: +4\r\n", "abcd"),
        head("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\n"),
        head("Host: other\r\nContent-Length: 2\r\n", "{}"),
    ]
}

/// What every attacker of a shape shares.
pub struct Setup {
    pub target: Target,
    /// The attackers' own tenant, and its big events for `big-pages`.
    pub key: String,
    pub until: Instant,
    pub answers: Answers,
}

/// One attacker connection's loop.
pub async fn attack(shape: Attack, s: Arc<Setup>, n: usize) {
    let host = &s.target.host;
    let key = &s.key;
    let until = s.until;
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let answer = match shape {
            Attack::Slowloris => {
                let head = format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-Pad: ");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    b"a".to_vec(),
                    Duration::from_millis(500),
                    until,
                    false,
                )
                .await
            }
            Attack::Idle => {
                let Ok(stream) = TcpStream::connect(s.target.addr).await else {
                    record(&s.answers, "refused");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (mut read, _write) = stream.into_split();
                first_status(&mut read, until).await
            }
            Attack::Pipeline => {
                let Ok(mut c) = TcpStream::connect(s.target.addr).await else {
                    record(&s.answers, "refused");
                    continue;
                };
                let one = format!("GET /health/live HTTP/1.1\r\nHost: {host}\r\n\r\n");
                if c.write_all(one.repeat(100).as_bytes()).await.is_err() {
                    record(&s.answers, "reset");
                    continue;
                }
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let answered = loop {
                    let seen = buf.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
                    if seen >= 100 && buf.ends_with(b"}") {
                        break "100 answered";
                    }
                    match tokio::time::timeout_at(until.into(), c.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break "cut short",
                    }
                };
                answered.to_string()
            }
            Attack::Smuggle => {
                let requests = smuggling_requests(host, key);
                let request = &requests[(n + round) % requests.len()];
                send_once(&s.target, request, until).await
            }
            Attack::ChunkExtension => {
                let head = format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n1b;x=");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b'a'; 64 * 1024],
                    Duration::ZERO,
                    until,
                    false,
                )
                .await
            }
            Attack::EndlessBody => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes();
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    chunk,
                    Duration::from_millis(50),
                    until,
                    false,
                )
                .await
            }
            Attack::NoKeyBigBody => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4000000\r\n\r\n");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b'x'; 1024],
                    Duration::from_millis(10),
                    until,
                    false,
                )
                .await
            }
            Attack::SlowBatches => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: 5242880\r\n\r\n{{");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b' '; 1024],
                    Duration::from_secs(1),
                    until,
                    true,
                )
                .await
            }
            Attack::BigPages => {
                // The answer's head is read; its body never is.
                let request = format!("GET /api/inbox?limit=1000&status=all HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n");
                send_and_drip(
                    &s.target,
                    request.into_bytes(),
                    Vec::new(),
                    Duration::from_secs(3600),
                    until,
                    true,
                )
                .await
            }
            Attack::RefusedValues => {
                let events = vec![r#"{"type":"x","payload":{"n":1e999999}}"#; 1000].join(",");
                let body = format!(r#"{{"events":[{events}]}}"#);
                let request = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                send_once(&s.target, request.as_bytes(), until).await
            }
            Attack::Signup => {
                let body = r#"{"organization_name":"flood"}"#;
                let request = format!("POST /api/keys/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                send_once(&s.target, request.as_bytes(), until).await
            }
            Attack::UnknownKeys => {
                let stranger = triggers::auth::NewKey::generate().plaintext;
                let request = format!(
                    "GET /api/inbox HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {stranger}\r\n\r\n"
                );
                send_once(&s.target, request.as_bytes(), until).await
            }
        };
        record(&s.answers, answer);
    }
}

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

/// How a slow shape sends: `head`, then `piece` every `every` (as fast as the server reads
/// when zero); with `hold`, the connection stays open past the answer.
struct Drip {
    head: String,
    piece: Vec<u8>,
    every: Duration,
    hold: bool,
}

/// The slow shapes' sending; `None` for the shapes that send whole requests.
fn drip(shape: Attack, host: &str, key: &str) -> Option<Drip> {
    let drip = |head: String, piece: Vec<u8>, every: Duration, hold: bool| {
        Some(Drip {
            head,
            piece,
            every,
            hold,
        })
    };
    let ms = Duration::from_millis;
    match shape {
        Attack::Slowloris => drip(
            format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-Pad: "),
            b"a".to_vec(),
            ms(500),
            false,
        ),
        Attack::ChunkExtension => drip(
            format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n1b;x="),
            vec![b'a'; 64 * 1024],
            Duration::ZERO,
            false,
        ),
        Attack::EndlessBody => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes(),
            ms(50),
            false,
        ),
        Attack::NoKeyBigBody => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4000000\r\n\r\n"),
            vec![b'x'; 1024],
            ms(10),
            false,
        ),
        Attack::SlowBatches => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: 5242880\r\n\r\n{{"),
            vec![b' '; 1024],
            ms(1000),
            true,
        ),
        // The answer's head is read; its body never is.
        Attack::BigPages => drip(
            format!("GET /api/inbox?limit=1000&status=all HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n"),
            Vec::new(),
            Duration::ZERO,
            true,
        ),
        _ => None,
    }
}

/// A whole request of the shapes that send one per connection; `None` for the others.
fn whole_request(shape: Attack, host: &str, key: &str) -> Option<String> {
    let post = |path: &str, key: Option<&str>, body: &str| {
        let key = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{key}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match shape {
        Attack::RefusedValues => {
            let events = vec![r#"{"type":"x","payload":{"n":1e999999}}"#; 1000].join(",");
            Some(post(
                "/api/events/batch",
                Some(key),
                &format!(r#"{{"events":[{events}]}}"#),
            ))
        }
        Attack::Signup => Some(post(
            "/api/keys/generate",
            None,
            r#"{"organization_name":"flood"}"#,
        )),
        Attack::UnknownKeys => {
            let stranger = triggers::auth::NewKey::generate().plaintext;
            Some(format!(
                "GET /api/inbox HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {stranger}\r\n\r\n"
            ))
        }
        _ => None,
    }
}

/// 100 pipelined requests in one write on a fresh connection; whether all were answered.
async fn pipeline(target: &Target, until: Instant) -> String {
    let Ok(mut c) = TcpStream::connect(target.addr).await else {
        return "refused".into();
    };
    let one = format!("GET /health/live HTTP/1.1\r\nHost: {}\r\n\r\n", target.host);
    if c.write_all(one.repeat(100).as_bytes()).await.is_err() {
        return "reset".into();
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let seen = buf.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        if seen >= 100 && buf.ends_with(b"}") {
            return "100 answered".into();
        }
        match tokio::time::timeout_at(until.into(), c.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return "cut short".into(),
        }
    }
}

/// One attacker connection's loop.
pub async fn attack(shape: Attack, s: Arc<Setup>, n: usize) {
    let (host, key, until) = (&s.target.host, &s.key, s.until);
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let answer = if let Some(d) = drip(shape, host, key) {
            send_and_drip(
                &s.target,
                d.head.into_bytes(),
                d.piece,
                d.every,
                until,
                d.hold,
            )
            .await
        } else if let Some(request) = whole_request(shape, host, key) {
            send_once(&s.target, request.as_bytes(), until).await
        } else {
            match shape {
                Attack::Idle => match TcpStream::connect(s.target.addr).await {
                    Ok(stream) => {
                        let (mut read, _write) = stream.into_split();
                        first_status(&mut read, until).await
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        "refused".into()
                    }
                },
                Attack::Pipeline => pipeline(&s.target, until).await,
                Attack::Smuggle => {
                    let requests = smuggling_requests(host, key);
                    let request = &requests[(n + round) % requests.len()];
                    send_once(&s.target, request, until).await
                }
                _ => unreachable!("{shape:?} drips or sends whole requests"),
            }
        };
        record(&s.answers, answer);
    }
}

//! delivery::send: one attempt over HTTP. The host is resolved here and every address it
//! resolves to is judged by `egress` before any connection (a name that resolves to a private
//! address is refused, whichever address would have been tried); the connection goes to the
//! addresses judged, with no second lookup. No redirects are followed, no proxy is used, and
//! the answer's body is read up to `ATTEMPT_TEXT_BYTES_MAX` and dropped; what is kept of it, as
//! of every error, is made storable (`storable_text`) here, where it comes in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::schedule::parse_retry_after;
use super::sign::signature;
use crate::db::deliveries::{storable_text, Attempt, ATTEMPT_TEXT_BYTES_MAX};
use crate::egress;
use crate::hooks::{Endpoint, Job};
use crate::ids::rfc3339;
use crate::jsonb_text;

/// Idle connections kept per host (scheme, host and port): many endpoints may share a host (a
/// receiving service, or one load balancer), each with `webhook_concurrency` in flight, and a
/// connection closed after each burst is a connection opened for the next.
const IDLE_PER_HOST: usize = 512;
/// How long an idle connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// What one attempt found.
#[derive(Debug)]
pub struct Sent {
    pub attempt: Attempt,
    pub kind: Answer,
}

#[derive(Debug, PartialEq)]
pub enum Answer {
    Delivered,
    /// 410: the receiver wants no more.
    Gone,
    /// Any other failure; `retry_after` when a 429 or 503 asked for a wait.
    Failed {
        retry_after: Option<Duration>,
    },
}

/// A resolver that refuses names resolving to addresses `egress` finds not public.
struct Egress;

#[derive(Debug)]
struct NotPublic(String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPublic {}

impl Resolve for Egress {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                if let Err(why) = egress::check_ip(a.ip()) {
                    return Err(
                        Box::new(NotPublic(format!("{host} resolves to {}: {why}", a.ip())))
                            as Box<dyn std::error::Error + Send + Sync>,
                    );
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client every attempt of a node uses (its connections are pooled per endpoint).
pub fn client(
    connect_timeout: Duration,
    timeout: Duration,
    per_endpoint: usize,
    allow_private: bool,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(IDLE_PER_HOST.max(per_endpoint))
        .pool_idle_timeout(IDLE_FOR)
        .user_agent(concat!("triggers/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b.dns_resolver(Arc::new(Egress));
    }
    b.build().expect("building the webhook HTTP client")
}

/// The body of a delivery: the event as the inbox shows it, without its status. The payload is
/// the text PostgreSQL prints for it, whether the job came from a claim (read back from the
/// table) or a persister (the request's bytes, printed here by `jsonb_text`): every attempt of
/// an event carries the same bytes, and the same as the inbox.
pub fn body(job: &Job) -> Vec<u8> {
    let printed = (!job.printed)
        .then(|| jsonb_text::canonical(&job.payload))
        .flatten();
    let payload = printed.as_ref().map_or(&job.payload[..], |p| p.as_bytes());
    let mut out = Vec::with_capacity(payload.len() + 200);
    out.extend_from_slice(br#"{"id":""#);
    out.extend_from_slice(job.id.to_string().as_bytes());
    out.extend_from_slice(br#"","type":"#);
    serde_json::to_writer(&mut out, &*job.kind).expect("writing to a Vec");
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload);
    out.extend_from_slice(br#","dedup_id":"#);
    serde_json::to_writer(&mut out, &job.dedup_id.as_deref()).expect("writing to a Vec");
    out.extend_from_slice(br#","created_at":""#);
    out.extend_from_slice(rfc3339(job.created_at).to_string().as_bytes());
    out.extend_from_slice(br#""}"#);
    out
}

/// Makes attempt number `job.attempts + 1` of `job` to `endpoint`.
pub async fn attempt(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    job: &Job,
    allow_private: bool,
) -> Sent {
    let attempted_at = crate::ids::now_micros();
    let started = Instant::now();
    let number = job.attempts.saturating_add(1) as i16;
    let failed = |error: &str, status: Option<i16>, response: Option<String>, kind: Answer| Sent {
        attempt: Attempt {
            attempt: number,
            attempted_at,
            status_code: status,
            error: Some(error.to_string()),
            latency_us: started.elapsed().as_micros().min(i32::MAX as u128) as i32,
            response: response.map(|r: String| storable_text(r.as_bytes())),
        },
        kind,
    };
    // A literal address is not resolved, so it is judged here; names are judged by `Egress`.
    if let Err(refused) = egress::check_url(&endpoint.url, allow_private) {
        let why = match refused {
            egress::Refused::Invalid(w) => w,
            egress::Refused::NotPublic(w) => w.to_string(),
        };
        return failed(
            "address_not_allowed",
            None,
            Some(why),
            Answer::Failed { retry_after: None },
        );
    }
    let id = job.id.to_string();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let body = body(job);
    // During rotations' grace periods every secret still in its grace signs too,
    // space-separated, as the specification allows: receivers holding any one verify.
    let now = SystemTime::now();
    let sig = signature(&endpoint.secret, &id, timestamp, &body).map(|mut all| {
        let retired = endpoint.retired.iter().filter(|(_, until)| *until > now);
        for (secret, _) in retired {
            if let Some(s) = signature(secret, &id, timestamp, &body) {
                all.push(' ');
                all.push_str(&s);
            }
        }
        all
    });
    let Some(sig) = sig else {
        return failed(
            "bad_secret",
            None,
            None,
            Answer::Failed { retry_after: None },
        );
    };
    let sent = client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return failed(
                error_class(&e),
                None,
                Some(error_chain(&e)),
                Answer::Failed { retry_after: None },
            )
        }
    };
    let status = resp.status().as_u16();
    let retry_after = match status {
        429 | 503 => resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
        _ => None,
    };
    let mut kept = Vec::new();
    let mut read_error = None;
    while kept.len() < ATTEMPT_TEXT_BYTES_MAX {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = ATTEMPT_TEXT_BYTES_MAX - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(error_class(&e));
                break;
            }
        }
    }
    let response = Some(storable_text(&kept));
    let latency_us = started.elapsed().as_micros().min(i32::MAX as u128) as i32;
    let (kind, error) = match status {
        200..=299 => (Answer::Delivered, None),
        410 => (Answer::Gone, Some("gone")),
        _ => (
            Answer::Failed { retry_after },
            Some(if status >= 500 {
                "server_error"
            } else {
                "client_error"
            }),
        ),
    };
    // A 2xx whose body broke off still counts: the receiver said it took the event.
    let error = error.or(read_error.filter(|_| kind != Answer::Delivered));
    Sent {
        attempt: Attempt {
            attempt: number,
            attempted_at,
            status_code: Some(status as i16),
            error: error.map(str::to_string),
            latency_us,
            response,
        },
        kind,
    }
}

/// A stable class for an attempt that got no answer.
fn error_class(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.is::<NotPublic>() {
            return "address_not_allowed";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "response"
    } else {
        "request"
    }
}

/// An error and its causes, outermost first: "error sending request …: client error (Connect):
/// dns error: …", so that an attempt's record says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, OrgId};

    #[test]
    fn an_error_is_recorded_with_its_causes() {
        let inner = std::io::Error::other("dns error: no such host");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            error_chain(&Outer(inner)),
            "error sending request: dns error: no such host"
        );
    }

    #[test]
    fn the_body_is_the_event_as_json() {
        let job = Job {
            org: OrgId::new(),
            id: EventId::new_v7(),
            kind: "order \"x\"".into(),
            payload: br#"{"a":[1,2]}"#.to_vec().into(),
            printed: false,
            dedup_id: Some("d1".into()),
            created_at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            keep_days: 1,
            generation: 0,
            attempts: 0,
            lease_until: UNIX_EPOCH,
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&job)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": job.id.to_string(),
                "type": "order \"x\"",
                "payload": {"a": [1, 2]},
                "dedup_id": "d1",
                "created_at": "2023-11-14T22:13:20.123456Z",
            })
        );
    }

    #[test]
    fn the_payload_is_sent_as_postgresql_prints_it_whatever_bytes_it_came_in() {
        let job = |payload: &[u8], printed: bool| Job {
            org: OrgId::new(),
            id: EventId(uuid::Uuid::nil()),
            kind: "t".into(),
            payload: payload.to_vec().into(),
            printed,
            dedup_id: None,
            created_at: UNIX_EPOCH,
            keep_days: 1,
            generation: 0,
            attempts: 0,
            lease_until: UNIX_EPOCH,
        };
        // As a persister hands it over (the request's bytes), and as a claim reads it back.
        let raw = body(&job(br#"{ "b":1, "a":1.50e1, "a":"\u00e9\/" }"#, false));
        let stored = body(&job(r#"{"a": "é/", "b": 1}"#.as_bytes(), true));
        assert_eq!(raw, stored);
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains(r#""payload":{"a": "é/", "b": 1},"#), "{text}");
    }
}

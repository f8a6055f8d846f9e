//! api::webhook: `POST` / `GET` / `DELETE /api/webhook/config`, where an organization's events
//! are pushed. The signing secret (Standard Webhooks, `whsec_` + base64) is shown once, when
//! set. URLs naming `localhost` or a literal private, loopback or link-local address are refused
//! unless the operator allows private targets (`webhook_allow_private`); since a name can
//! resolve anywhere, delivery checks the resolved address again when it connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::context::Context;
use super::error::{parse_body, ApiError};
use crate::db::orgs;
use crate::http::{Method, Request, Response};
use crate::ids::{now_micros, rfc3339, KeyHash};

const URL_BYTES_MAX: usize = 2048;
/// Random bytes in a signing secret (Standard Webhooks allows 24 to 64).
const SECRET_BYTES: usize = 32;
/// How much of the secret `GET` shows: the prefix and 4 characters.
const SECRET_SHOWN_LEN: usize = 10;

#[derive(Deserialize)]
struct ConfigIn {
    webhook_url: Option<String>,
    url: Option<String>,
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 100.64.0.0/10, carrier-grade NAT: private in practice.
        || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xC0) == 64))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xFE00) == 0xFC00 // unique local fc00::/7
        || (first & 0xFFC0) == 0xFE80) // link local fe80::/10
}

/// Whether an address may receive webhooks when private targets are not allowed. Delivery
/// applies it to resolved addresses too.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Checks a webhook URL; pure, so every rule is unit-tested.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, ApiError> {
    let invalid = |why: &str| ApiError::InvalidWebhookUrl(format!("`webhook_url` {why}"));
    if raw.len() > URL_BYTES_MAX {
        return Err(invalid("is longer than 2048 bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(&format!("is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use http or https"));
    }
    let host = url.host().ok_or_else(|| invalid("has no host"))?;
    if allow_private {
        return Ok(url);
    }
    let refused = |what: &str| {
        ApiError::WebhookUrlNotAllowed(format!(
            "`webhook_url` points at {what}; this server does not deliver there"
        ))
    };
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                return Err(refused("localhost"));
            }
        }
        url::Host::Ipv4(ip) if !is_public_v4(ip) => {
            return Err(refused("a private, loopback or link-local address"))
        }
        url::Host::Ipv6(ip) if !is_public_v6(ip) => {
            return Err(refused("a private, loopback or link-local address"))
        }
        _ => {}
    }
    Ok(url)
}

fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub async fn config(
    ctx: &Context,
    key: Option<KeyHash>,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    let org = ctx.authenticate(key).await?;
    let org_id = org.id;
    let queries = &ctx.queries;
    match req.method {
        Method::Post => {
            let input: ConfigIn = parse_body(req.body, |why| {
                ApiError::InvalidWebhookUrl(format!("expected {{\"webhook_url\": str}}: {why}"))
            })?;
            let raw = input
                .webhook_url
                .or(input.url)
                .ok_or_else(|| ApiError::InvalidWebhookUrl("`webhook_url` is required".into()))?;
            let url = check_url(&raw, ctx.settings.webhook_allow_private)?;
            let secret = new_secret();
            let updated_at = now_micros();
            let (stored_url, stored_secret) = (url.to_string(), secret.clone());
            queries
                .run("set webhook", move |c| {
                    orgs::set_webhook(c, org_id, &stored_url, &stored_secret, updated_at)
                })
                .await?;
            Ok(Response::json_value(
                200,
                &json!({
                    "webhook_url": url.to_string(),
                    "secret": secret,
                    "updated_at": rfc3339(updated_at).to_string(),
                }),
            ))
        }
        Method::Delete => {
            queries
                .run("delete webhook", move |c| orgs::clear_webhook(c, org_id))
                .await?;
            Ok(Response::json(204, Vec::new()))
        }
        _ => {
            let hook = queries
                .run("get webhook", move |c| orgs::webhook(c, org_id))
                .await?;
            let secret_prefix = hook
                .url
                .as_ref()
                .and(hook.secret)
                .map(|s| s.chars().take(SECRET_SHOWN_LEN).collect::<String>());
            Ok(Response::json_value(
                200,
                &json!({
                    "webhook_url": hook.url,
                    "secret_prefix": secret_prefix,
                    "updated_at": hook.updated_at.filter(|_| hook.url.is_some()).map(|t| rfc3339(t).to_string()),
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_http_urls_pass_and_the_rest_is_refused_with_its_code() {
        for ok in [
            "https://hooks.example.com/in",
            "http://93.184.216.34:8080/x?y=1",
            "https://[2606:2800:220:1::1]/",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for (bad, code) in [
            ("not a url", "invalid_webhook_url"),
            ("/relative/path", "invalid_webhook_url"),
            ("ftp://example.com/", "invalid_webhook_url"),
            ("http://localhost:9000/", "webhook_url_not_allowed"),
            ("http://api.localhost/", "webhook_url_not_allowed"),
            ("http://127.0.0.1/", "webhook_url_not_allowed"),
            ("http://10.1.2.3/", "webhook_url_not_allowed"),
            ("http://172.16.0.1/", "webhook_url_not_allowed"),
            ("http://192.168.1.1/", "webhook_url_not_allowed"),
            (
                "http://169.254.169.254/latest/meta-data",
                "webhook_url_not_allowed",
            ),
            ("http://100.64.0.1/", "webhook_url_not_allowed"),
            ("http://0.0.0.0/", "webhook_url_not_allowed"),
            ("http://[::1]/", "webhook_url_not_allowed"),
            ("http://[fe80::1]/", "webhook_url_not_allowed"),
            ("http://[fd00::1]/", "webhook_url_not_allowed"),
            ("http://[::ffff:10.0.0.1]/", "webhook_url_not_allowed"),
        ] {
            assert_eq!(check_url(bad, false).unwrap_err().code(), code, "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[test]
    fn secrets_are_standard_webhooks_secrets() {
        let s = new_secret();
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(b.len(), SECRET_BYTES);
        assert_ne!(new_secret(), s);
    }
}

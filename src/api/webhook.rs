//! api::webhook: `POST` / `GET` / `DELETE /api/webhook/config`, where an organization's events
//! are pushed, and `POST /api/webhook/enable` / `disable`. The signing secret (Standard
//! Webhooks, `whsec_` + base64) is shown once, when set. URLs with credentials or port 0 are
//! refused; so, unless the operator allows private targets (`webhook_allow_private`), are URLs
//! whose host `egress` finds not public (special-purpose addresses in every form, single-label
//! and special-use names); since a name can resolve anywhere, delivery checks the resolved
//! address again with the same classifier.
//!
//! Every change applies to this node's `Hooks` at once (events committed after the answer are
//! pushed, or not), and to other nodes within a second (they re-read every endpoint).

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::context::Context;
use super::error::{parse_body, ApiError};
use crate::db::deliveries;
use crate::db::orgs::{self, Org};
use crate::db::Work;
use crate::egress::{self, Refused};
use crate::http::{Method, Request, Response};
use crate::ids::{now_micros, rfc3339};

/// Random bytes in a signing secret (Standard Webhooks allows 24 to 64).
const SECRET_BYTES: usize = 32;
/// How much of the secret `GET` shows: the prefix and 4 characters.
const SECRET_SHOWN_LEN: usize = 10;

#[derive(Deserialize)]
struct ConfigIn {
    webhook_url: Option<String>,
    url: Option<String>,
}

/// Checks a webhook URL with the classifier delivery uses (`egress`).
fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, ApiError> {
    egress::check_url(raw, allow_private).map_err(|refused| match refused {
        Refused::Invalid(why) => ApiError::InvalidWebhookUrl(format!("`webhook_url` {why}")),
        Refused::NotPublic(what) => ApiError::WebhookUrlNotAllowed(format!(
            "`webhook_url` points at {what}; this server does not deliver there"
        )),
    })
}

fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub async fn config(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
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
            let hooks = ctx.hooks.clone();
            queries
                .run(Work::Org(org_id), "set webhook", move |c| {
                    orgs::set_webhook(c, org_id, &stored_url, &stored_secret, updated_at)?;
                    hooks.reload_one(c, org_id)
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
                .run(Work::Org(org_id), "delete webhook", move |c| {
                    orgs::clear_webhook(c, org_id)
                })
                .await?;
            ctx.hooks.set(org_id, None);
            Ok(Response::json(204, Vec::new()))
        }
        _ => {
            let hook = queries
                .run(Work::Org(org_id), "get webhook", move |c| {
                    orgs::webhook(c, org_id)
                })
                .await?;
            let secret_prefix = hook
                .url
                .as_ref()
                .and(hook.secret)
                .map(|s| s.chars().take(SECRET_SHOWN_LEN).collect::<String>());
            let configured = hook.url.is_some();
            Ok(Response::json_value(
                200,
                &json!({
                    "webhook_url": hook.url,
                    "secret_prefix": secret_prefix,
                    "updated_at": hook.updated_at.filter(|_| configured).map(|t| rfc3339(t).to_string()),
                    "enabled": configured && hook.enabled,
                    "disabled_reason": hook.disabled_reason.filter(|_| configured),
                }),
            ))
        }
    }
}

/// `POST /api/webhook/enable` (`on`) or `/disable`. Disabling keeps what is queued: enabling
/// delivers it. Events committed while disabled are not queued (replay covers them).
pub async fn enable(ctx: &Context, org: &Org, on: bool) -> Result<Response, ApiError> {
    let (org_id, hooks) = (org.id, ctx.hooks.clone());
    let hook = ctx
        .queries
        .run(Work::Org(org_id), "enable webhook", move |c| {
            let changed = if on {
                deliveries::enable(c, org_id)?
            } else {
                deliveries::disable(c, org_id, "manual")?
            };
            if !changed {
                return Ok(None);
            }
            hooks.reload_one(c, org_id)?;
            orgs::webhook(c, org_id).map(Some)
        })
        .await?
        .ok_or(ApiError::WebhookNotConfigured)?;
    Ok(Response::json_value(
        200,
        &json!({
            "enabled": hook.enabled,
            "disabled_reason": hook.disabled_reason,
        }),
    ))
}

/// Longest grace period of a secret rotation, and the default.
const GRACE_MAX_S: u64 = 7 * 24 * 3600;
const GRACE_DEFAULT_S: u64 = 24 * 3600;

#[derive(Deserialize, Default)]
struct RotateIn {
    grace_seconds: Option<u64>,
}

/// `POST /api/webhook/rotate-secret`: a new signing secret, shown once; the previous one keeps
/// signing beside it (two signatures in `webhook-signature`) for `grace_seconds`.
pub async fn rotate_secret(
    ctx: &Context,
    org: &Org,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    let input: RotateIn = if req.body.iter().all(u8::is_ascii_whitespace) {
        RotateIn::default()
    } else {
        parse_body(req.body, |why| {
            ApiError::InvalidRequest(format!("expected {{\"grace_seconds\": int}}: {why}"))
        })?
    };
    let grace = input.grace_seconds.unwrap_or(GRACE_DEFAULT_S);
    if grace > GRACE_MAX_S {
        return Err(ApiError::InvalidRequest(format!(
            "`grace_seconds` may be at most {GRACE_MAX_S} (7 days)"
        )));
    }
    let secret = new_secret();
    let until = now_micros() + std::time::Duration::from_secs(grace);
    let (org_id, hooks, stored) = (org.id, ctx.hooks.clone(), secret.clone());
    let rotated = ctx
        .queries
        .run(Work::Org(org_id), "rotate webhook secret", move |c| {
            let rotated = deliveries::rotate_secret(c, org_id, &stored, until)?;
            if rotated {
                hooks.reload_one(c, org_id)?;
            }
            Ok::<_, postgres::Error>(rotated)
        })
        .await?;
    if !rotated {
        return Err(ApiError::WebhookNotConfigured);
    }
    Ok(Response::json_value(
        200,
        &json!({
            "secret": secret,
            "previous_secret_expires_at": rfc3339(until).to_string(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_codes() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        for (bad, code) in [
            ("ftp://example.com/", "invalid_webhook_url"),
            ("https://user:p4ss@example.com/", "invalid_webhook_url"),
            ("http://[::ffff:0:7f00:1]/", "webhook_url_not_allowed"),
            (
                "http://metadata.google.internal/",
                "webhook_url_not_allowed",
            ),
        ] {
            assert_eq!(check_url(bad, false).unwrap_err().code(), code, "{bad}");
        }
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

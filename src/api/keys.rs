//! api::keys: `POST /api/keys/generate` creates an organization and its first key;
//! `GET /api/keys` describes the caller's organization; `POST /api/keys/rotate` replaces the key.
//! A plaintext key appears once, in the response that creates it.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::context::{client_bucket, Context};
use super::error::{parse_body, ApiError};
use crate::auth::NewKey;
use crate::db::orgs::{self, Org};
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{now_micros, rfc3339, OrgId};
use crate::tiers::{Tier, Tiers};

const ORG_NAME_CHARS_MAX: usize = 255;

#[derive(Deserialize)]
struct GenerateIn {
    organization_name: Option<String>,
    tier: Option<String>,
}

fn tier_limit(tier: Option<&Tier>) -> serde_json::Value {
    json!(tier.and_then(|t| t.per_minute))
}

/// Days the organization's events are kept; `null`: forever.
fn retention(days: u16) -> serde_json::Value {
    json!((days > 0).then_some(days))
}

/// The admin token, when configured, was checked before the body was read (`Handler::admit`).
pub async fn generate(ctx: &Context, req: &Request<'_>) -> Result<Response, ApiError> {
    let settings = &ctx.settings;
    let self_serve = settings.admin_token.is_none();
    if self_serve {
        // Open self-serve signup: limited per client address.
        let now = std::time::Instant::now();
        ctx.limits
            .keygen
            .take(client_bucket(req.peer), settings.keygen_per_minute, 1, now)
            .map_err(|l| ApiError::RateLimited(l.retry_after_s))?;
    }
    let input: GenerateIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!(
            "expected {{\"organization_name\": str, \"tier\"?: str}}: {why}"
        ))
    })?;
    let name = input
        .organization_name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::InvalidRequest("`organization_name` is required".into()))?;
    let tier_name = input.tier.as_deref().unwrap_or(Tiers::DEFAULT);
    let tier = settings
        .tiers
        .find(tier_name)
        .map_err(ApiError::InvalidTier)?
        .clone();
    let max = &settings.keygen_tier_max;
    if self_serve && tier.rate() > max.rate() {
        return Err(ApiError::TierNotAllowed(format!(
            "self-serve signup may choose tiers up to `{}`; `{}` needs the operator",
            max.name, tier.name
        )));
    }
    let (org, key) = new_org(&name, &tier).map_err(ApiError::InvalidRequest)?;
    let org = Arc::new(org);
    let generation = ctx.keys.generation();
    let row = org.clone();
    ctx.queries
        .run(Work::Signup, "create organization", move |c| {
            orgs::create(c, &row)
        })
        .await?;
    ctx.keys.insert_if_current(org.clone(), generation);
    tracing::info!(org = %org.id, tier = %org.tier, "organization created");
    Ok(Response::json_value(201, &created(&org, &key, &tier)))
}

/// A new organization named `name` on `tier`, with its first key: what key generation and the
/// operator's `triggers org create` store. Its events start in its tier's retention class.
pub fn new_org(name: &str, tier: &Tier) -> Result<(Org, NewKey), String> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > ORG_NAME_CHARS_MAX || name.contains('\0') {
        return Err(format!(
            "`organization_name` must be 1..{ORG_NAME_CHARS_MAX} characters"
        ));
    }
    let key = NewKey::generate();
    let org = Org {
        id: OrgId::new(),
        name: name.to_string(),
        tier: tier.name.clone(),
        key_prefix: key.shown_prefix().to_string(),
        created_at: now_micros(),
        key_hash: key.hash,
        keep_classes: vec![tier.retention_days as i16],
    };
    Ok((org, key))
}

/// What creating `org` answers: its key, shown this once, and what its tier allows.
pub fn created(org: &Org, key: &NewKey, tier: &Tier) -> serde_json::Value {
    json!({
        "api_key": key.plaintext,
        "organization_id": org.id.to_string(),
        "organization_name": org.name,
        "tier": org.tier,
        "rate_limit_per_minute": tier_limit(Some(tier)),
        "retention_days": retention(tier.retention_days),
        "created_at": rfc3339(org.created_at).to_string(),
    })
}

pub async fn show(ctx: &Context, org: &Org) -> Result<Response, ApiError> {
    let org_id = org.id;
    let webhook = ctx
        .queries
        .run(Work::Org(org_id), "organization webhook", move |c| {
            orgs::webhook(c, org_id)
        })
        .await?;
    Ok(Response::json_value(
        200,
        &json!({
            "organization_id": org.id.to_string(),
            "organization_name": org.name,
            "tier": org.tier,
            "rate_limit_per_minute": tier_limit(ctx.settings.tiers.get(&org.tier)),
            "retention_days": retention(ctx.settings.tiers.retention_days(&org.tier)),
            "webhook_url": webhook.url,
            "api_key_prefix": org.key_prefix,
            "created_at": rfc3339(org.created_at).to_string(),
        }),
    ))
}

/// Replaces the caller's key. The old key is refused by every core of this node before the
/// response leaves (the cache is shared, and look-ups racing with the rotation retry), and by
/// other nodes once they hear the NOTIFY sent in the same transaction.
pub async fn rotate(ctx: &Context, old: &Org) -> Result<Response, ApiError> {
    let key = NewKey::generate();
    let rotated_at = now_micros();
    let org = Arc::new(Org {
        id: old.id,
        name: old.name.clone(),
        tier: old.tier.clone(),
        key_prefix: key.shown_prefix().to_string(),
        created_at: old.created_at,
        key_hash: key.hash,
        keep_classes: old.keep_classes.clone(),
    });
    let row = org.clone();
    ctx.queries
        .write(Work::Org(old.id), "rotate key", move |tx| {
            orgs::rotate_key(tx, row.id, &row.key_hash, &row.key_prefix, rotated_at)
        })
        .await?;
    ctx.keys.forget_org(org.id);
    ctx.keys
        .insert_if_current(org.clone(), ctx.keys.generation());
    tracing::info!(org = %org.id, "API key rotated");
    Ok(Response::json_value(
        200,
        &json!({
            "api_key": key.plaintext,
            "organization_id": org.id.to_string(),
            "rotated_at": rfc3339(rotated_at).to_string(),
        }),
    ))
}

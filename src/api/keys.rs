//! api::keys: `POST /api/keys/generate` creates an organization and its first key;
//! `GET /api/keys` describes the caller's organization; `POST /api/keys/rotate` replaces the key.
//! A plaintext key appears once, in the response that creates it.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{authenticate, parse_body, require_admin, ApiError, Request};
use crate::auth::{NewKey, Org};
use crate::config::{Tier, DEFAULT_TIER};
use crate::core::Core;
use crate::http::response::Response;
use crate::ids::{now_micros, rfc3339, OrgId};

const ORG_NAME_CHARS_MAX: usize = 255;

#[derive(Deserialize)]
struct GenerateIn {
    organization_name: Option<String>,
    tier: Option<String>,
}

fn tier_limit(tier: Option<&Tier>) -> serde_json::Value {
    json!(tier.and_then(|t| t.per_minute))
}

/// Stores `org`'s current key (its hash and shown prefix), issued at `at`.
fn store_key(
    tx: &mut postgres::Transaction<'_>,
    org: &Org,
    at: std::time::SystemTime,
) -> Result<u64, postgres::Error> {
    tx.execute(
        "INSERT INTO api_keys (org_id, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4)",
        &[&org.id.0, &org.key_hash.0.as_slice(), &org.key_prefix, &at],
    )
}

pub async fn generate(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let config = &core.shared.config;
    require_admin(core, req)?;
    if config.admin_token.is_none() {
        // Open self-serve signup: limited per client address.
        let now = std::time::Instant::now();
        core.shared
            .keygen_limits
            .take(req.peer, config.keygen_per_minute, 1, now)
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
    if name.chars().count() > ORG_NAME_CHARS_MAX || name.contains('\0') {
        return Err(ApiError::InvalidRequest(format!(
            "`organization_name` must be 1..{ORG_NAME_CHARS_MAX} characters"
        )));
    }
    let tier_name = input.tier.unwrap_or_else(|| DEFAULT_TIER.to_string());
    let tier = config.tier(&tier_name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
        ApiError::InvalidTier(format!(
            "unknown tier `{tier_name}`; known tiers: {}",
            known.join(", ")
        ))
    })?;
    let key = NewKey::generate();
    let generation = core.shared.keys.generation();
    let org = Arc::new(Org {
        id: OrgId::new(),
        name,
        tier: tier.name.clone(),
        key_prefix: key.shown_prefix().to_string(),
        created_at: now_micros(),
        key_hash: key.hash,
    });
    let row = org.clone();
    core.shared
        .queries
        .run("create organization", move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO organizations (org_id, name, tier, created_at) VALUES ($1, $2, $3, $4)",
                &[&row.id.0, &row.name, &row.tier, &row.created_at],
            )?;
            store_key(&mut tx, &row, row.created_at)?;
            tx.commit()
        })
        .await?;
    core.shared.keys.insert_if_current(org.clone(), generation);
    tracing::info!(org = %org.id, tier = %org.tier, "organization created");
    Ok(Response::json_value(
        201,
        &json!({
            "api_key": key.plaintext,
            "organization_id": org.id.to_string(),
            "organization_name": org.name,
            "tier": org.tier,
            "rate_limit_per_minute": tier_limit(Some(&tier)),
            "created_at": rfc3339(org.created_at).to_string(),
        }),
    ))
}

pub async fn show(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let org = authenticate(core, req).await?;
    let org_id = org.id.0;
    let webhook_url: Option<String> = core
        .shared
        .queries
        .run("organization webhook", move |c| {
            let row = c.query_opt(
                "SELECT webhook_url FROM organizations WHERE org_id = $1",
                &[&org_id],
            )?;
            Ok(row.and_then(|r| r.get(0)))
        })
        .await?;
    Ok(Response::json_value(
        200,
        &json!({
            "organization_id": org.id.to_string(),
            "organization_name": org.name,
            "tier": org.tier,
            "rate_limit_per_minute": tier_limit(core.shared.config.tier(&org.tier)),
            "webhook_url": webhook_url,
            "api_key_prefix": org.key_prefix,
            "created_at": rfc3339(org.created_at).to_string(),
        }),
    ))
}

/// Replaces the caller's key. The old key is refused by every core of this node before the
/// response leaves (the cache is shared, and look-ups racing with the rotation retry), and by
/// other nodes once they hear the NOTIFY sent in the same transaction.
pub async fn rotate(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
    let old = authenticate(core, req).await?;
    let key = NewKey::generate();
    let rotated_at = now_micros();
    let org = Arc::new(Org {
        id: old.id,
        name: old.name.clone(),
        tier: old.tier.clone(),
        key_prefix: key.shown_prefix().to_string(),
        created_at: old.created_at,
        key_hash: key.hash,
    });
    let row = org.clone();
    core.shared
        .queries
        .run("rotate key", move |c| {
            let mut tx = c.transaction()?;
            // Concurrent rotations of one organization take turns, so exactly one key survives.
            tx.execute(
                "SELECT 1 FROM organizations WHERE org_id = $1 FOR UPDATE",
                &[&row.id.0],
            )?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE org_id = $1 AND revoked_at IS NULL",
                &[&row.id.0, &rotated_at],
            )?;
            store_key(&mut tx, &row, rotated_at)?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&crate::auth::ROTATION_CHANNEL, &row.id.to_string()],
            )?;
            tx.commit()
        })
        .await?;
    let keys = &core.shared.keys;
    keys.forget_org(org.id);
    keys.insert_if_current(org.clone(), keys.generation());
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

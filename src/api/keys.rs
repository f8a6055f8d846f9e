//! api::keys: `POST /api/keys/generate` creates an organization and its first key;
//! `GET /api/keys` describes the caller's organization. The plaintext key appears once, in the
//! 201 that creates it.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{authenticate, parse_body, ApiError, Request};
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

pub async fn generate(core: &Rc<Core>, req: &Request<'_>) -> Result<Response, ApiError> {
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
    let config = &core.shared.config;
    let tier_name = input.tier.unwrap_or_else(|| DEFAULT_TIER.to_string());
    let tier = config.tier(&tier_name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
        ApiError::InvalidTier(format!(
            "unknown tier `{tier_name}`; known tiers: {}",
            known.join(", ")
        ))
    })?;
    let key = NewKey::generate();
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
            tx.execute(
                "INSERT INTO api_keys (org_id, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4)",
                &[&row.id.0, &row.key_hash.0.as_slice(), &row.key_prefix, &row.created_at],
            )?;
            tx.commit()
        })
        .await?;
    core.shared.keys.insert(org.clone());
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
    Ok(Response::json_value(
        200,
        &json!({
            "organization_id": org.id.to_string(),
            "organization_name": org.name,
            "tier": org.tier,
            "rate_limit_per_minute": tier_limit(core.shared.config.tier(&org.tier)),
            "webhook_url": null,
            "api_key_prefix": org.key_prefix,
            "created_at": rfc3339(org.created_at).to_string(),
        }),
    ))
}

//! db::orgs: every statement on `organizations` and `api_keys`: creating an organization with
//! its first key, finding an organization by key, rotating its key, and its webhook settings.

use std::time::SystemTime;

use postgres::{Client, Transaction};

use super::deliveries;
use crate::ids::{KeyHash, OrgId};

/// The channel on which an organization's change of keys or tier is announced (the payload is
/// its id): every node forgets what it cached of it. The name is from when only key rotation
/// used it, and stays so that nodes of different versions still hear each other.
pub const ROTATION_CHANNEL: &str = "triggers_key_rotation";

/// The channel on which every key issued is announced (the payload is its shown prefix), so
/// that every node knows the prefixes of issued keys (`auth::KeyCache`).
pub const KEYS_CHANNEL: &str = "triggers_keys";

/// Tells every node, once `tx` commits, to forget what it cached of `org`.
fn announce(tx: &mut Transaction<'_>, org: OrgId) -> Result<(), postgres::Error> {
    super::listen::notify(tx, ROTATION_CHANNEL, &org.to_string())
}

/// An organization as one of its keys sees it.
#[derive(Clone, Debug)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub tier: String,
    /// The start of the key, shown to tell keys apart.
    pub key_prefix: String,
    pub created_at: SystemTime,
    pub key_hash: KeyHash,
    /// The retention classes its events are stored in (`events.keep_days`): a class is
    /// recorded here before the first event in it commits, so an inbox page need read only
    /// these (see `events::page`).
    pub keep_classes: Vec<i16>,
}

/// The organization whose unrevoked key hashes to `hash`.
pub fn find_by_key(client: &mut Client, hash: &KeyHash) -> Result<Option<Org>, postgres::Error> {
    let row = client.query_opt(
        "SELECT o.org_id, o.name, o.tier, o.created_at, k.key_prefix, o.keep_classes
         FROM api_keys k JOIN organizations o USING (org_id)
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        &[&hash.0.as_slice()],
    )?;
    Ok(row.map(|r| Org {
        id: r.get(0),
        name: r.get(1),
        tier: r.get(2),
        created_at: r.get(3),
        key_prefix: r.get(4),
        key_hash: *hash,
        keep_classes: r.get(5),
    }))
}

/// Records that `org` stores events in the retention class `days`; idempotent.
pub fn add_class(client: &mut Client, org: OrgId, days: i16) -> Result<(), postgres::Error> {
    client.execute(
        "UPDATE organizations SET keep_classes = keep_classes || $2::int2
         WHERE org_id = $1 AND NOT ($2::int2 = ANY(keep_classes))",
        &[&org, &days],
    )?;
    Ok(())
}

/// Stores `org`'s key (its hash and shown prefix), issued at `at`, and announces its prefix on
/// `KEYS_CHANNEL` once `tx` commits.
fn insert_key(
    tx: &mut Transaction<'_>,
    org: OrgId,
    hash: &KeyHash,
    prefix: &str,
    at: SystemTime,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO api_keys (org_id, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4)",
        &[&org, &hash.0.as_slice(), &prefix, &at],
    )?;
    super::listen::notify(tx, KEYS_CHANNEL, prefix)
}

/// The shown prefixes of every unrevoked key, at most `max`.
pub fn issued_prefixes(client: &mut Client, max: usize) -> Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        "SELECT DISTINCT key_prefix FROM api_keys WHERE revoked_at IS NULL LIMIT $1",
        &[&(max as i64)],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates `org` with its first key, in one transaction.
pub fn create(client: &mut Client, org: &Org) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO organizations (org_id, name, tier, created_at, keep_classes)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &org.id,
            &org.name,
            &org.tier,
            &org.created_at,
            &org.keep_classes,
        ],
    )?;
    insert_key(
        &mut tx,
        org.id,
        &org.key_hash,
        &org.key_prefix,
        org.created_at,
    )?;
    tx.commit()
}

/// Issues `org` one more key (its other keys stay as they are): the operator's way back in for
/// an organization that lost its keys. `false` when there is no such organization.
pub fn add_key(
    client: &mut Client,
    org: OrgId,
    hash: &KeyHash,
    prefix: &str,
    at: SystemTime,
) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let found = tx
        .query_opt(
            "SELECT 1 FROM organizations WHERE org_id = $1 FOR UPDATE",
            &[&org],
        )?
        .is_some();
    if found {
        insert_key(&mut tx, org, hash, prefix, at)?;
        tx.commit()?;
    }
    Ok(found)
}

/// Revokes `org`'s keys and stores the new one in `tx`, which the caller commits: the rotation
/// is announced on `ROTATION_CHANNEL` then.
pub fn rotate_key(
    tx: &mut Transaction<'_>,
    org: OrgId,
    hash: &KeyHash,
    prefix: &str,
    at: SystemTime,
) -> Result<(), postgres::Error> {
    // Concurrent rotations of one organization take turns, so exactly one key survives.
    tx.execute(
        "SELECT 1 FROM organizations WHERE org_id = $1 FOR UPDATE",
        &[&org],
    )?;
    tx.execute(
        "UPDATE api_keys SET revoked_at = $2 WHERE org_id = $1 AND revoked_at IS NULL",
        &[&org, &at],
    )?;
    insert_key(tx, org, hash, prefix, at)?;
    announce(tx, org)
}

/// An organization as an operator lists it.
#[derive(Debug)]
pub struct Listed {
    pub id: OrgId,
    pub name: String,
    pub tier: String,
    pub created_at: SystemTime,
    pub active_keys: i64,
    pub webhook_url: Option<String>,
}

/// Every organization, oldest first (an operator's listing: not confined to one).
pub fn list(client: &mut Client) -> Result<Vec<Listed>, postgres::Error> {
    let rows = client.query(
        "SELECT o.org_id, o.name, o.tier, o.created_at, o.webhook_url,
                (SELECT count(*) FROM api_keys k
                 WHERE k.org_id = o.org_id AND k.revoked_at IS NULL)
         FROM organizations o ORDER BY o.created_at, o.org_id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            name: r.get(1),
            tier: r.get(2),
            created_at: r.get(3),
            webhook_url: r.get(4),
            active_keys: r.get(5),
        })
        .collect())
}

/// Puts `org` on `tier`; every node forgets its cached copy. `false`: no such organization.
pub fn set_tier(client: &mut Client, org: OrgId, tier: &str) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let found = tx.execute(
        "UPDATE organizations SET tier = $2 WHERE org_id = $1",
        &[&org, &tier],
    )? == 1;
    announce(&mut tx, org)?;
    tx.commit()?;
    Ok(found)
}

/// A key as an operator lists it: never the key, only its shown prefix.
#[derive(Debug)]
pub struct KeyRow {
    pub prefix: String,
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

/// `org`'s keys, newest first.
pub fn keys(client: &mut Client, org: OrgId) -> Result<Vec<KeyRow>, postgres::Error> {
    let rows = client.query(
        "SELECT key_prefix, created_at, revoked_at FROM api_keys
         WHERE org_id = $1 ORDER BY created_at DESC",
        &[&org],
    )?;
    Ok(rows
        .iter()
        .map(|r| KeyRow {
            prefix: r.get(0),
            created_at: r.get(1),
            revoked_at: r.get(2),
        })
        .collect())
}

/// Revokes `org`'s unrevoked keys whose shown prefix starts with `prefix` (all of them when
/// it is empty) at `at`; every node forgets its cached copy. Returns how many.
pub fn revoke_keys(
    client: &mut Client,
    org: OrgId,
    prefix: &str,
    at: SystemTime,
) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    let n = tx.execute(
        "UPDATE api_keys SET revoked_at = $3
         WHERE org_id = $1 AND revoked_at IS NULL AND starts_with(key_prefix, $2)",
        &[&org, &prefix, &at],
    )?;
    announce(&mut tx, org)?;
    tx.commit()?;
    Ok(n)
}

/// Where `org`'s events are pushed; the secret is the Standard Webhooks signing secret.
#[derive(Debug, Default)]
pub struct Webhook {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub updated_at: Option<SystemTime>,
    pub enabled: bool,
    /// Why it is disabled: "gone" (it answered 410) or "manual".
    pub disabled_reason: Option<String>,
}

pub fn webhook(client: &mut Client, org: OrgId) -> Result<Webhook, postgres::Error> {
    let row = client.query_opt(
        "SELECT webhook_url, webhook_secret, webhook_updated_at, webhook_enabled,
                webhook_disabled_reason
         FROM organizations WHERE org_id = $1",
        &[&org],
    )?;
    Ok(row.map_or_else(Webhook::default, |r| Webhook {
        url: r.get(0),
        secret: r.get(1),
        updated_at: r.get(2),
        enabled: r.get(3),
        disabled_reason: r.get(4),
    }))
}

/// What setting or clearing a webhook resets: enabled, no rotation under way, not resting.
const WEBHOOK_STATE_FRESH: &str = "webhook_enabled = true, webhook_disabled_reason = NULL,
     webhook_previous_secret = NULL, webhook_previous_secret_until = NULL,
     webhook_retired_secrets = '{}', webhook_retired_until = '{}',
     webhook_rest_until = NULL";

/// Sets `org`'s webhook, enabled; deliveries waiting for a disabled endpoint are due now, and
/// those queued in an earlier generation (by a node that had not heard of a deletion yet) go.
pub fn set_webhook(
    client: &mut Client,
    org: OrgId,
    url: &str,
    secret: &str,
    at: SystemTime,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        &format!(
            "UPDATE organizations
             SET webhook_url = $2, webhook_secret = $3, webhook_updated_at = $4,
                 {WEBHOOK_STATE_FRESH}
             WHERE org_id = $1"
        ),
        &[&org, &url, &secret, &at],
    )?;
    tx.execute(
        "DELETE FROM deliveries d USING organizations o
         WHERE d.org_id = $1 AND o.org_id = $1 AND d.generation <> o.webhook_generation",
        &[&org],
    )?;
    deliveries::wake(&mut tx, org)?;
    deliveries::announce(&mut tx, org)?;
    tx.commit()
}

/// Removes `org`'s webhook and every delivery still queued for it (the events stay in the
/// inbox), and starts its webhook's next generation: a delivery another node queues before it
/// hears of this is never made, whatever webhook is set later.
pub fn clear_webhook(client: &mut Client, org: OrgId) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        &format!(
            "UPDATE organizations
             SET webhook_url = NULL, webhook_secret = NULL, webhook_updated_at = now(),
                 webhook_generation = webhook_generation + 1,
                 {WEBHOOK_STATE_FRESH}
             WHERE org_id = $1"
        ),
        &[&org],
    )?;
    tx.execute("DELETE FROM deliveries WHERE org_id = $1", &[&org])?;
    deliveries::announce(&mut tx, org)?;
    tx.commit()
}

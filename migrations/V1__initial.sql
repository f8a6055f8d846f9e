-- V1: organizations, their API keys, and events.
--
-- Every primary key and unique index leads with org_id, so the schema can be distributed by
-- organization (a sharded PostgreSQL such as Citus) without a redesign. Never edit this file
-- once it has landed: add a new migration.

CREATE TABLE organizations (
    org_id     uuid PRIMARY KEY,
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    tier       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    org_id     uuid NOT NULL REFERENCES organizations (org_id) ON DELETE CASCADE,
    -- SHA-256 of the whole key; the plaintext is never stored.
    key_hash   bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    key_prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (org_id, key_hash)
);

-- Authentication looks keys up by hash. Not unique: 256 random bits make collisions moot, and a
-- unique index here would not lead with org_id.
CREATE INDEX api_keys_by_hash ON api_keys (key_hash) WHERE revoked_at IS NULL;

-- No foreign key to organizations: ingest is the hot path, and an event's org_id always comes
-- from an authenticated key.
CREATE TABLE events (
    org_id       uuid NOT NULL,
    id           uuid NOT NULL,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    dedup_id     text,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'delivered', 'failed')),
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz,
    PRIMARY KEY (org_id, id)
);

-- One event per (organization, dedup_id); events without a dedup_id never collide.
CREATE UNIQUE INDEX events_dedup ON events (org_id, dedup_id) WHERE dedup_id IS NOT NULL;

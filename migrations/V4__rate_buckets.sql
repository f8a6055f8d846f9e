-- V4: rate limits that hold across every node sharing the database. One token bucket per
-- organization; a node leases tokens from it a few seconds' worth at a time and spends them
-- in memory (src/ratelimit/lease.rs), so the bucket sees one statement per lease, not one per
-- event.
--
-- Unlogged: a lease writes no WAL and waits for no flush (logged, the first leases of 100
-- organizations held their first requests up to ~100 ms at 12k req/s). After a crash of
-- PostgreSQL the table is empty, and every bucket starts full again: at most one burst more
-- for each organization, once. Events are never unlogged.

CREATE UNLOGGED TABLE rate_buckets (
    org_id     uuid PRIMARY KEY,
    -- Tokens left as of `updated_at`; refilled at the tier's rate up to its burst when leased.
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL,
    -- What the last lease took: returned to the node that asked, in the same statement.
    granted    double precision NOT NULL
);

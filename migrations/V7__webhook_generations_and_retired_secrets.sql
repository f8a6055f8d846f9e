-- Webhook changes reach every node at once: each change is announced on the channel
-- `triggers_webhooks` (its payload the organization's id), where nodes re-read that one
-- endpoint, instead of every node re-reading every endpoint each second.
--
-- A deletion starts a new generation of the organization's webhook. A delivery is queued in
-- the generation current at its commit and made only in that generation: one queued by a node
-- that had not yet heard of a deletion is never delivered to a webhook set later.
ALTER TABLE organizations ADD COLUMN webhook_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN generation bigint NOT NULL DEFAULT 0;

-- Every secret rotated out and still in its grace period signs beside the current one, newest
-- first (a second rotation within the grace no longer ends the first one's). The single
-- previous secret is still written, for nodes of the earlier release during an upgrade.
ALTER TABLE organizations
    ADD COLUMN webhook_retired_secrets text[] NOT NULL DEFAULT '{}',
    ADD COLUMN webhook_retired_until timestamptz[] NOT NULL DEFAULT '{}';
UPDATE organizations
SET webhook_retired_secrets = ARRAY[webhook_previous_secret],
    webhook_retired_until = ARRAY[webhook_previous_secret_until]
WHERE webhook_previous_secret IS NOT NULL AND webhook_previous_secret_until > now();

-- The per-recipient frequency cap (issue 17): one row per marketing message
-- admitted under an agent's `limits.per_recipient`, at the time it was last
-- admitted. Counted by address, and by contact id when the job carried one,
-- so one person's email, phone and WhatsApp count together. Rows older than
-- a week and a day can no longer be in any window and are pruned.
CREATE TABLE recipient_sends (
    message_id  uuid PRIMARY KEY,
    agent_id    text NOT NULL,
    address     text NOT NULL,
    contact_id  text,
    sent_at     timestamptz NOT NULL
);
CREATE INDEX recipient_sends_address ON recipient_sends (agent_id, address, sent_at);
CREATE INDEX recipient_sends_contact ON recipient_sends (agent_id, contact_id, sent_at)
    WHERE contact_id IS NOT NULL;

-- `capped`: dropped by the cap because the job said `"cap": "drop"`.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN (
        'queued', 'scheduled', 'deferred', 'sent', 'delivered',
        'failed', 'bounced', 'suppressed', 'rejected', 'cancelled', 'unknown',
        'capped'));

-- Channel fallback: the job a message falls back from (the job's
-- `parent_id`), so a lead's "next channel attempt" can be followed both ways.
ALTER TABLE outbound_messages ADD COLUMN parent_id uuid;
CREATE INDEX outbound_messages_parent ON outbound_messages (parent_id)
    WHERE parent_id IS NOT NULL;

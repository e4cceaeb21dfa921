-- Provider webhooks are accepted durably: once its signature is verified, a
-- notification is written here (one INSERT) and answered, then applied to
-- the message it is about. One that names a message whose provider id is not
-- recorded yet (the provider called back before our write committed) stays
-- pending and is tried again by the sweeper for a bounded time.

CREATE TABLE webhook_inbox (
    id                  bigserial PRIMARY KEY,
    provider            text NOT NULL,
    -- The integration whose URL and secret the notification came in on, or
    -- NULL for the platform's account. Every effect is scoped to it.
    integration_id      uuid,
    -- That integration's agent (NULL for the platform's account).
    agent_id            text,
    -- The provider's id for this notification (Resend: svix-id; Twilio:
    -- MessageSid and status). Unique per account, so a replay is ignored and
    -- one account cannot pre-empt another's ids.
    delivery_id         text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('status', 'inbound')),
    -- For a status report: the provider's id of the message it is about.
    provider_message_id text,
    -- What to apply; cleared once applied, so that only the ids needed to
    -- recognise a replay are kept, not recipients' addresses.
    event               jsonb,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    received_at         timestamptz NOT NULL DEFAULT now(),
    processed_at        timestamptz,
    CHECK ((processed_at IS NULL) = (event IS NOT NULL)),
    UNIQUE NULLS NOT DISTINCT (provider, integration_id, delivery_id)
);

-- The sweeper's work list: only pending rows, which are few.
CREATE INDEX webhook_inbox_pending ON webhook_inbox (next_attempt_at)
    WHERE processed_at IS NULL;
-- Pruning old status reports.
CREATE INDEX webhook_inbox_processed ON webhook_inbox (processed_at)
    WHERE processed_at IS NOT NULL AND kind = 'status';

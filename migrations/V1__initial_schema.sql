-- switchboard's initial schema. Table and column names are the contract in
-- DESIGN.md: other services read these tables directly.

CREATE TABLE agents (
    id                  text PRIMARY KEY,
    company_name        text,
    reply_email         text,
    from_name           text,
    timezone            text NOT NULL DEFAULT 'UTC',
    -- Window in the recipient's local time in which marketing may be sent.
    send_window_start   time NOT NULL DEFAULT '09:00',
    send_window_end     time NOT NULL DEFAULT '20:00',
    quiet_hours_email   boolean NOT NULL DEFAULT false,
    -- {"per_second": N, "per_hour": N, "per_day": N} per channel.
    limits              jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE integrations (
    id                  uuid PRIMARY KEY,
    agent_id            text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel             text NOT NULL CHECK (channel IN ('email', 'sms', 'whatsapp', 'voice')),
    provider            text NOT NULL,
    -- Non-secret settings only (from address, region, phone number, ...).
    config              jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- AES-256-GCM of the JSON object of secret settings: nonce || ciphertext.
    secrets_ciphertext  bytea,
    secrets_key_id      text,
    active              boolean NOT NULL DEFAULT true,
    verification_status text NOT NULL DEFAULT 'unverified'
                        CHECK (verification_status IN ('unverified', 'verified', 'failed')),
    last_error          text,
    verified_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((secrets_ciphertext IS NULL) = (secrets_key_id IS NULL)),
    -- One integration per agent and channel: connecting again replaces it.
    UNIQUE (agent_id, channel)
);

CREATE TABLE outbound_messages (
    id                  uuid PRIMARY KEY,
    -- Null only for a rejected job whose agent or channel could not be read.
    agent_id            text,
    channel             text CHECK (channel IN ('email', 'sms', 'whatsapp', 'voice')),
    recipient           text,
    category            text CHECK (category IN ('transactional', 'marketing')),
    status              text NOT NULL CHECK (status IN (
                            'queued', 'scheduled', 'deferred', 'sent', 'delivered',
                            'failed', 'bounced', 'suppressed', 'rejected', 'cancelled')),
    route               text CHECK (route IN ('agent', 'platform', 'simulation')),
    provider            text,
    integration_id      uuid REFERENCES integrations (id) ON DELETE SET NULL,
    provider_message_id text,
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    campaign_id         text,
    sequence_id         text,
    step                integer,
    -- The validated job in v1 wire form, so that it can be replayed or
    -- rescheduled without the original AMQP message.
    job                 jsonb,
    -- While a worker is sending, it owns the row until this time. A
    -- redelivered copy of the job waits for the owner instead of sending twice.
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'rejected' OR (agent_id IS NOT NULL AND channel IS NOT NULL AND recipient IS NOT NULL))
);

-- Webhooks find the message by the provider's id.
CREATE INDEX outbound_messages_provider_message_id
    ON outbound_messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_messages_agent_created ON outbound_messages (agent_id, created_at DESC);
CREATE INDEX outbound_messages_campaign ON outbound_messages (campaign_id) WHERE campaign_id IS NOT NULL;
CREATE INDEX outbound_messages_sequence ON outbound_messages (agent_id, sequence_id, recipient)
    WHERE sequence_id IS NOT NULL;

CREATE TABLE outbound_events (
    id                  bigserial PRIMARY KEY,
    -- Null for events that belong to no message we sent (an inbound reply).
    message_id          uuid,
    agent_id            text,
    channel             text,
    event               text NOT NULL,
    provider            text,
    provider_message_id text,
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_events_message ON outbound_events (message_id, id);
CREATE INDEX outbound_events_agent_created ON outbound_events (agent_id, created_at DESC);

CREATE TABLE opt_outs (
    id                  bigserial PRIMARY KEY,
    -- Null means platform-wide: nobody on the platform may message the address.
    agent_id            text,
    channel             text NOT NULL CHECK (channel IN ('email', 'sms', 'whatsapp', 'voice')),
    address             text NOT NULL,
    reason              text NOT NULL CHECK (reason IN (
                            'stop_keyword', 'unsubscribe', 'hard_bounce', 'complaint',
                            'manual', 'provider_rejected')),
    source              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (agent_id, channel, address)
);
CREATE INDEX opt_outs_lookup ON opt_outs (channel, address);

CREATE TABLE scheduled_jobs (
    id                  uuid PRIMARY KEY,
    agent_id            text NOT NULL,
    channel             text NOT NULL,
    -- The job in v1 wire form, republished to switchboard.jobs when due.
    job                 jsonb NOT NULL,
    due_at              timestamptz NOT NULL,
    reason              text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scheduled_jobs_due ON scheduled_jobs (due_at);

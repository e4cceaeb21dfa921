-- A reply is credited to the agent's latest message to that person on that
-- channel (event `replied`), for campaign stats; this finds it without
-- scanning the agent's history.
CREATE INDEX outbound_messages_recipient
    ON outbound_messages (agent_id, recipient, channel, created_at DESC);

-- Campaign stats (GET /v1/campaigns/{id}/stats) read this rollup: one row
-- per campaign message that reached a stage, with the stages it reached and
-- the cost providers reported. Counting from `outbound_events` would read
-- every event of the campaign (four million for a million-message
-- campaign); this reads one row per message. Kept by a statement-level
-- trigger, so a batch of events costs one upsert statement, not one per
-- event.
CREATE TABLE campaign_stages (
    message_id    uuid PRIMARY KEY,
    campaign_id   text NOT NULL,
    agent_id      text NOT NULL,
    channel       text NOT NULL,
    sent          boolean NOT NULL DEFAULT false,
    delivered     boolean NOT NULL DEFAULT false,
    opened        boolean NOT NULL DEFAULT false,
    clicked       boolean NOT NULL DEFAULT false,
    replied       boolean NOT NULL DEFAULT false,
    bounced       boolean NOT NULL DEFAULT false,
    -- Providers report one currency per account: the first seen is kept.
    cost_currency text,
    cost_amount   numeric
);
CREATE INDEX campaign_stages_campaign ON campaign_stages (campaign_id, agent_id);

-- The provider-reported cost of an event: VAPI's `cost` (a number, USD) or
-- Africa's Talking's `provider_response.cost` ("KES 0.8000").
CREATE FUNCTION switchboard_event_cost(detail jsonb, OUT currency text, OUT amount numeric)
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(c) = 'number' THEN 'USD'
                WHEN c #>> '{}' ~ '^[A-Z]{3} -?[0-9]+(\.[0-9]+)?$' THEN split_part(c #>> '{}', ' ', 1)
           END,
           CASE WHEN jsonb_typeof(c) = 'number' THEN (c #>> '{}')::numeric
                WHEN c #>> '{}' ~ '^[A-Z]{3} -?[0-9]+(\.[0-9]+)?$' THEN split_part(c #>> '{}', ' ', 2)::numeric
           END
      FROM (SELECT COALESCE(detail->'cost', detail->'provider_response'->'cost') AS c) raw
$$;

CREATE FUNCTION switchboard_campaign_stages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_stages AS s
        (message_id, campaign_id, agent_id, channel, sent, delivered, opened, clicked,
         replied, bounced, cost_currency, cost_amount)
    SELECT m.id, m.campaign_id, m.agent_id, m.channel,
           bool_or(n.event = 'sent'), bool_or(n.event = 'delivered'),
           bool_or(n.event = 'opened'), bool_or(n.event = 'clicked'),
           bool_or(n.event = 'replied'), bool_or(n.event = 'bounced'),
           min((switchboard_event_cost(n.detail)).currency),
           sum((switchboard_event_cost(n.detail)).amount)
      FROM new_events n
      JOIN outbound_messages m ON m.id = n.message_id
     WHERE m.campaign_id IS NOT NULL
       AND (n.event IN ('sent', 'delivered', 'opened', 'clicked', 'replied', 'bounced')
            OR n.detail ? 'cost' OR n.detail->'provider_response' ? 'cost')
     GROUP BY m.id, m.campaign_id, m.agent_id, m.channel
     -- Rows in one order, so two batches never wait on each other crosswise.
     ORDER BY m.id
    ON CONFLICT (message_id) DO UPDATE SET
        sent = s.sent OR EXCLUDED.sent,
        delivered = s.delivered OR EXCLUDED.delivered,
        opened = s.opened OR EXCLUDED.opened,
        clicked = s.clicked OR EXCLUDED.clicked,
        replied = s.replied OR EXCLUDED.replied,
        bounced = s.bounced OR EXCLUDED.bounced,
        cost_currency = COALESCE(s.cost_currency, EXCLUDED.cost_currency),
        cost_amount = CASE WHEN EXCLUDED.cost_amount IS NULL THEN s.cost_amount
                           ELSE COALESCE(s.cost_amount, 0) + EXCLUDED.cost_amount END;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbound_events_campaign_stages
    AFTER INSERT ON outbound_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION switchboard_campaign_stages();

-- The events already recorded.
INSERT INTO campaign_stages
    (message_id, campaign_id, agent_id, channel, sent, delivered, opened, clicked,
     replied, bounced, cost_currency, cost_amount)
SELECT m.id, m.campaign_id, m.agent_id, m.channel,
       bool_or(e.event = 'sent'), bool_or(e.event = 'delivered'),
       bool_or(e.event = 'opened'), bool_or(e.event = 'clicked'),
       bool_or(e.event = 'replied'), bool_or(e.event = 'bounced'),
       min((switchboard_event_cost(e.detail)).currency),
       sum((switchboard_event_cost(e.detail)).amount)
  FROM outbound_events e
  JOIN outbound_messages m ON m.id = e.message_id
 WHERE m.campaign_id IS NOT NULL
   AND (e.event IN ('sent', 'delivered', 'opened', 'clicked', 'replied', 'bounced')
        OR e.detail ? 'cost' OR e.detail->'provider_response' ? 'cost')
 GROUP BY m.id, m.campaign_id, m.agent_id, m.channel;

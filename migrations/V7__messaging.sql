-- WhatsApp's customer-service window: free-form messages may only be sent
-- within 24 hours of the person's last message to the business. The last
-- inbound time is kept per agent (NULL: the platform's account) and
-- address, written when an inbound WhatsApp message is applied from the
-- webhook inbox and read by the worker before a free-form WhatsApp send.
CREATE TABLE whatsapp_windows (
    agent_id        text,
    address         text NOT NULL,
    last_inbound_at timestamptz NOT NULL,
    UNIQUE NULLS NOT DISTINCT (agent_id, address)
);

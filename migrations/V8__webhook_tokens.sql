-- Tokens of signed webhooks whose signature covers a one-time token
-- (Mailgun: HMAC of timestamp + token). A token seen before is a replay of
-- a captured request and is refused. Rows outlive the signature's time
-- tolerance, after which the timestamp check refuses the request anyway.
CREATE TABLE webhook_tokens (
    provider text NOT NULL,
    token text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, token)
);

CREATE INDEX webhook_tokens_seen_at ON webhook_tokens (seen_at);

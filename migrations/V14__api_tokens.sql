-- Agent-scoped API tokens. Only the SHA-256 of a token is kept: tokens are
-- 256 random bits, so a fast hash is enough (nothing to brute-force), and
-- a stolen table reveals no usable token.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    agent_id    text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_agent ON api_tokens (agent_id, created_at);

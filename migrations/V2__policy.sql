-- Policy: cancelled sequences and durable rate-limit counters.

-- A sequence (agent, sequence_id) cancelled for one recipient, or for all
-- when recipient = ''. Jobs of it still in the queue are cancelled when they
-- are consumed; scheduled ones are cancelled at once.
CREATE TABLE sequence_cancellations (
    agent_id    text NOT NULL,
    sequence_id text NOT NULL,
    recipient   text NOT NULL DEFAULT '',
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, sequence_id, recipient)
);

-- Hour and day quotas per key (agent and channel, or provider account),
-- counted here so they survive restarts and hold across worker processes.
CREATE TABLE rate_counters (
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (key, window_start)
);

CREATE INDEX scheduled_jobs_sequence
    ON scheduled_jobs (agent_id, channel, (job->>'to'), (job->>'sequence_id'))
    WHERE job ? 'sequence_id';

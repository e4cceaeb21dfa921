-- Per-second limits kept in Postgres, so that they hold for any number of
-- worker processes (issue 11). GCRA: `tat` is the key's theoretical arrival
-- time; each send takes the slot max(tat, now) and moves tat one emission
-- interval (1 / per_second) on.
CREATE TABLE rate_slots (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- A slot handed to a job that was parked until it: the job uses it when it
-- comes back instead of queueing again behind everything handed out since.
CREATE TABLE rate_grants (
    key        text NOT NULL,
    job_id     uuid NOT NULL,
    slot       timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, job_id)
);

-- Open circuits, shared by every worker process: the process whose failures
-- opened an account's circuit writes it here (and records `circuit_opened`,
-- once for all); the others read it every second and stop calling the
-- account too. Deleted by the probe that closes it.
CREATE TABLE circuit_states (
    key        text PRIMARY KEY,
    open_until timestamptz NOT NULL,
    opened_at  timestamptz NOT NULL DEFAULT now()
);

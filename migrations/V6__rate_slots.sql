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

-- Delivery guarantees under default settings (issue 10).

-- `unknown`: the provider may have taken the message, but its answer was
-- lost (a timeout or a 5xx after the request was written) and the provider
-- takes no idempotency key, so switchboard does not send it again.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN (
        'queued', 'scheduled', 'deferred', 'sent', 'delivered',
        'failed', 'bounced', 'suppressed', 'rejected', 'cancelled', 'unknown'));

-- A dead letter the worker owes for this message: set with a `failed`
-- outcome that must reach `switchboard.dead`, cleared once the broker
-- confirmed the copy. A redelivered copy of a job that still owes one is
-- dead-lettered again instead of being acked as a duplicate.
ALTER TABLE outbound_messages ADD COLUMN dead_letter_reason text;

-- The worker that owns a `queued` row: the key of the session-level
-- advisory lock it holds while it lives (src/store/liveness.rs). A
-- redelivered copy takes the job over exactly when that lock is free.
ALTER TABLE outbound_messages ADD COLUMN owner integer;

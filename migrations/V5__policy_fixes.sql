-- Policy fixes (issue 18).

-- Hour and day counters of one key were told apart by their window start
-- alone, so from 00:00 to 01:00 UTC both were the same row and every send
-- counted twice (a per_hour of 100 let 50 through). Each counter now names
-- its span.
ALTER TABLE rate_counters ADD COLUMN span text;

-- Existing rows: a window starting at midnight UTC was the day's counter
-- (and, in the first hour, the hour's too); any other start was an hour's.
UPDATE rate_counters
   SET span = CASE WHEN window_start = date_trunc('day', window_start, 'UTC')
                   THEN 'day' ELSE 'hour' END;

ALTER TABLE rate_counters DROP CONSTRAINT rate_counters_pkey;

-- A shared row still counting the current midnight hour keeps serving as
-- that hour's counter as well: it can only over-count, never let more
-- through than the limit.
INSERT INTO rate_counters (key, span, window_start, count)
SELECT key, 'hour', window_start, count
  FROM rate_counters
 WHERE span = 'day' AND window_start > now() - interval '1 hour';

ALTER TABLE rate_counters
    ALTER COLUMN span SET NOT NULL,
    ADD CONSTRAINT rate_counters_span CHECK (span IN ('hour', 'day')),
    ADD PRIMARY KEY (key, span, window_start);

-- Due jobs are taken oldest first among those due at one instant (see
-- store::scheduled::lock_due); the index serves that order.
CREATE INDEX scheduled_jobs_due_order ON scheduled_jobs (due_at, created_at, id);
DROP INDEX scheduled_jobs_due;

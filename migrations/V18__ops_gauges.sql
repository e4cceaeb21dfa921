-- The current hour's and day's quota counters, read every few seconds by
-- each worker for the switchboard_quota_use_ratio gauge
-- (store::quotas::highest_use). The primary key leads with `key`, so
-- without this index that read would scan every counter of the last two
-- days. Counting stays a HOT update: `count` is in no index.
CREATE INDEX rate_counters_window ON rate_counters (window_start);

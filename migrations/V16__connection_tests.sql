-- Connection tests (`switchboard integrations test`, `POST …/test`): when an
-- integration's credentials were last tried against its provider, whatever
-- the verdict. `verified_at` says when they last passed; a test that could
-- not reach the provider moves only this column and `last_error`.
ALTER TABLE integrations ADD COLUMN last_tested_at timestamptz;

-- Provider failover (issue 17): an agent may connect backup accounts per
-- channel. `priority` 0 is the primary (the one integration per channel the
-- contract always had); 1, 2, … are backups tried in that order when the
-- primary's circuit is open or it refuses the account (revoked key,
-- suspended account).
ALTER TABLE integrations ADD COLUMN priority integer NOT NULL DEFAULT 0 CHECK (priority >= 0);
ALTER TABLE integrations DROP CONSTRAINT integrations_agent_id_channel_key;
ALTER TABLE integrations
    ADD CONSTRAINT integrations_agent_channel_priority_key UNIQUE (agent_id, channel, priority);

-- After the agent's own accounts, fail over to the platform's account only
-- when the agent allows it (its sender identity differs).
ALTER TABLE agents ADD COLUMN allow_platform_fallback boolean NOT NULL DEFAULT false;

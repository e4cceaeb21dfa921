-- Voice calling hours per agent: the recipient-local hours in which a call
-- may ring, for every category (transactional too). 08:00-21:00 are the
-- US TCPA's hours; an agent may widen (or narrow) them. The quiet-hours
-- window (send_window_*) still applies to marketing calls on top.
ALTER TABLE agents
    ADD COLUMN calling_hours_start time NOT NULL DEFAULT '08:00',
    ADD COLUMN calling_hours_end   time NOT NULL DEFAULT '21:00';

#!/usr/bin/env bash
# Times `switchboard campaigns stats` (the query behind
# GET /v1/campaigns/{id}/stats) on a campaign of a million events: 250,000
# messages with four events each, beside 250,000 messages of other
# campaigns. Uses a scratch database on the local Postgres, dropped at the
# end. Run from the repository root after `cargo build --release`:
#   bash scripts/campaign-stats-timing.sh
set -euo pipefail
PGHOST=${PGHOST:-127.0.0.1}
DB=switchboard_stats_timing
BIN=${BIN:-target/release/switchboard}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set BIN)" >&2; exit 1; }
psql -h "$PGHOST" -U postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
trap 'psql -h "$PGHOST" -U postgres -qc "DROP DATABASE IF EXISTS $DB"' EXIT
export DATABASE_URL="postgres://postgres@$PGHOST:5432/$DB"
"$BIN" migrate >/dev/null
psql -h "$PGHOST" -U postgres -d "$DB" -q <<'SQL'
INSERT INTO outbound_messages (id, agent_id, channel, recipient, category, status, campaign_id, job)
SELECT gen_random_uuid(), 'agent-' || (g % 50), (ARRAY['sms','email','whatsapp'])[1 + g % 3],
       '+1415' || lpad(g::text, 7, '0'), 'marketing',
       (ARRAY['delivered','delivered','sent','failed','bounced'])[1 + g % 5],
       CASE WHEN g <= 250000 THEN 'big' ELSE 'other-' || (g % 100) END, '{}'
  FROM generate_series(1, 500000) g;
INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
SELECT m.id, m.agent_id, m.channel, e.event,
       CASE WHEN e.event = 'sent' THEN '{"provider_response": {"cost": "KES 0.8000"}}'::jsonb
            ELSE '{}'::jsonb END
  FROM outbound_messages m
 CROSS JOIN (VALUES ('queued'), ('sent'), ('delivered'), ('opened')) AS e(event);
ANALYZE outbound_messages;
ANALYZE outbound_events;
ANALYZE campaign_stages;
SQL
events=$(psql -h "$PGHOST" -U postgres -d "$DB" -tAc \
  "SELECT count(*) FROM outbound_events e JOIN outbound_messages m ON m.id = e.message_id WHERE m.campaign_id = 'big'")
echo "campaign 'big': $events events; the tables hold $(psql -h "$PGHOST" -U postgres -d "$DB" -tAc 'SELECT count(*) FROM outbound_events') events"
for run in 1 2 3; do
  start=$(date +%s.%N)
  "$BIN" campaigns stats --campaign big >/dev/null
  end=$(date +%s.%N)
  echo "run $run: $(echo "$end - $start" | bc) s"
done
start=$(date +%s.%N)
"$BIN" campaigns stats --campaign big --agent agent-7 >/dev/null
end=$(date +%s.%N)
echo "one agent's share: $(echo "$end - $start" | bc) s"

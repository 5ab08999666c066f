-- The post-call webhook's results on the call, and every webhook delivery kept
-- (an unmatched conversation is stored, not dropped).
ALTER TABLE call_log ADD COLUMN call_successful TEXT;
ALTER TABLE call_log ADD COLUMN agent_duration_secs BIGINT;

CREATE TABLE webhook_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at      BIGINT  NOT NULL,
    event_type       TEXT    NOT NULL,
    conversation_id  TEXT,
    matched          BIGINT  NOT NULL,
    payload          TEXT    NOT NULL
);
CREATE INDEX webhook_events_conversation ON webhook_events (conversation_id);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

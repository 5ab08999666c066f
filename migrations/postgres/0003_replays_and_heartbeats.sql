-- Signed webhook deliveries accepted within the tolerance window, so a replay
-- of the same signed request is refused on every node sharing the database.
CREATE TABLE webhook_deliveries (
    signature    TEXT    PRIMARY KEY,
    received_at  BIGINT  NOT NULL
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- When each node was last known alive (the record writer beats every 10 s), so
-- the calls a crashed node left open end when it died, not when it restarted.
CREATE TABLE node_heartbeats (
    node_id   TEXT    PRIMARY KEY,
    alive_at  BIGINT  NOT NULL
);

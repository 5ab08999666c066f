-- Signed webhook deliveries accepted within the tolerance window, so a replay
-- of the same signed request is refused on every node sharing the database.
CREATE TABLE webhook_deliveries (
    signature    TEXT    PRIMARY KEY,
    received_at  BIGINT  NOT NULL
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

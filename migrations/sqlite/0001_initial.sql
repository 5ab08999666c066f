-- precall schema, SQLite flavour. Timestamps are UTC milliseconds since the Unix
-- epoch (BIGINT): the one time type both backends share through sqlx's Any driver.
-- Flags are BIGINT 0/1 for the same reason. docs/DATABASE.md documents every column.

CREATE TABLE caller_voice_mapping (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    caller_id     TEXT    NOT NULL UNIQUE,
    display_name  TEXT,
    samples       TEXT    NOT NULL,
    sample_hash   TEXT    NOT NULL,
    labels        TEXT    NOT NULL DEFAULT '{}',
    enabled       BIGINT  NOT NULL DEFAULT 1,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE voice_clone_cache (
    caller_id     TEXT    PRIMARY KEY,
    voice_id      TEXT    NOT NULL,
    sample_hash   TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX voice_clone_cache_expires ON voice_clone_cache (expires_at);

CREATE TABLE call_log (
    call_id              TEXT    PRIMARY KEY,
    revision             BIGINT  NOT NULL,
    node_id              TEXT    NOT NULL,
    protocol             TEXT    NOT NULL,
    external_id          TEXT    NOT NULL,
    caller               TEXT,
    callee               TEXT,
    started_at           BIGINT  NOT NULL,
    answered_at          BIGINT,
    bridged_at           BIGINT,
    ended_at             BIGINT,
    end_reason           TEXT,
    end_status           BIGINT,
    clone_outcome        TEXT,
    voice_id             TEXT,
    conversation_id      TEXT,
    transcript           TEXT,
    summary              TEXT,
    rtp_in_packets       BIGINT,
    rtp_in_lost          BIGINT,
    rtp_in_max_jitter_us BIGINT,
    rtp_out_packets      BIGINT
);
CREATE INDEX call_log_caller ON call_log (caller, started_at);
CREATE INDEX call_log_external ON call_log (external_id);
CREATE INDEX call_log_conversation ON call_log (conversation_id);
CREATE INDEX call_log_started ON call_log (started_at);
CREATE INDEX call_log_open ON call_log (node_id, ended_at);

CREATE TABLE voice_clone_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    caller_id     TEXT    NOT NULL,
    call_id       TEXT,
    started_at    BIGINT  NOT NULL,
    finished_at   BIGINT,
    latency_ms    BIGINT,
    http_status   BIGINT,
    error         TEXT,
    voice_id      TEXT
);
CREATE INDEX voice_clone_log_caller ON voice_clone_log (caller_id, started_at);
CREATE INDEX voice_clone_log_call ON voice_clone_log (call_id);
CREATE INDEX voice_clone_log_started ON voice_clone_log (started_at);

CREATE TABLE clone_ready_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    call_id       TEXT    NOT NULL,
    caller_id     TEXT    NOT NULL,
    voice_id      TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    waited_ms     BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL
);
CREATE INDEX clone_ready_events_call ON clone_ready_events (call_id);
CREATE INDEX clone_ready_events_caller ON clone_ready_events (caller_id, created_at);

CREATE TABLE clone_failed_events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id           TEXT    NOT NULL UNIQUE,
    call_id            TEXT    NOT NULL,
    caller_id          TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    fallback_voice_id  TEXT,
    waited_ms          BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL
);
CREATE INDEX clone_failed_events_call ON clone_failed_events (call_id);
CREATE INDEX clone_failed_events_caller ON clone_failed_events (caller_id, created_at);

CREATE TABLE clone_transfer_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    call_id       TEXT    NOT NULL,
    voice_id      TEXT    NOT NULL,
    waited_ms     BIGINT  NOT NULL,
    gap_ms        BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL
);
CREATE INDEX clone_transfer_events_call ON clone_transfer_events (call_id);
CREATE INDEX clone_transfer_events_created ON clone_transfer_events (created_at);

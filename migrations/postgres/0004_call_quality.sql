-- Per-call listening quality, so an operator can judge a trunk from its calls:
-- the E-model MOS estimate (x100, 100..450) from the RTP loss and jitter that
-- the receiver measured per RFC 3550.
ALTER TABLE call_log ADD COLUMN rtp_in_mos_x100 BIGINT;

-- The orphan sweeper asks, per voice at ElevenLabs, whether a cache row names it.
CREATE INDEX voice_clone_cache_voice ON voice_clone_cache (voice_id);

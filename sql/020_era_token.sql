-- rowcast 020: a token in the database's era, for rewinds that keep
-- PostgreSQL's statistics.
--
-- Positions and cursors count transaction ids within an era of the
-- database (src/changelog.rs, `Watermarks`). A crash starts a new era by
-- itself: crash recovery starts the statistics afresh
-- (pg_stat_bgwriter.stats_reset). A rewind that keeps them does not: a
-- restored file-system copy of a cleanly stopped cluster, or a standby made
-- from one and promoted, hands out again the ids the lost history had
-- used. A node that finds the transaction counter behind the position it
-- had read draws a new token here; the era every snapshot carries is the
-- statistics' time combined with it, so every position from before the
-- rewind is expired on every node. 0 until then: the era is the
-- statistics' time alone, as before this migration.
ALTER TABLE rowcast.retention ADD COLUMN era_token bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN rowcast.retention.era_token IS
    'drawn anew by a node that finds the transaction counter behind what it had read (a rewind that kept the statistics): part of every position''s era (src/changelog.rs, Watermarks)';

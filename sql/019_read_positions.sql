-- rowcast 019: the nodes' read positions, which retention keeps below.
--
-- Retention deleted rows of transactions that had ended a horizon (a few
-- seconds) ago: by then every node has normally read them. A node still
-- publishing a large transaction had not, and a long-open transaction that
-- committed just after it could lose its rows before that node read them (its
-- clients were then told to resync: nothing silent, but avoidable). Now each
-- node records here, every prune interval, the least xid it may still have to
-- read (its position's xmin), and retention deletes nothing at or above the
-- least of the rows still valid. A node that stops reporting (stopped, cut
-- off, killed, or an older binary) holds nothing back once its row's
-- `valid_until` has passed: the horizon alone applies to it, as before.

CREATE TABLE rowcast.read_positions (
    node text PRIMARY KEY,
    needs_from xid8 NOT NULL,
    valid_until timestamptz NOT NULL
);

COMMENT ON TABLE rowcast.read_positions IS
    'One row per running rowcast node: retention deletes no change with xid >= needs_from while clock_timestamp() < valid_until (src/read_positions.rs)';

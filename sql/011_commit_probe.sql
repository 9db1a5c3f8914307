-- The row a node's commit probe writes (issue #16; src/commit_probe.rs).
--
-- A ringing writer holds NOTIFY's lock through its commit's flush, so a node
-- must know how long a commit takes here to tell when rings would queue
-- writers. It times a durable commit of its own, now and then while rings
-- come; PostgreSQL flushes (and waits for synchronous standbys) only for a
-- transaction that wrote WAL, so the probe updates this one row. Nothing
-- reads it but people: `probed_at` is when a node last probed.
CREATE TABLE rowcast.commit_probe (
    id        int PRIMARY KEY CHECK (id = 1),
    probed_at timestamptz
);
INSERT INTO rowcast.commit_probe VALUES (1, NULL);

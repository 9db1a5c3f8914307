-- The doorbell without a table read (issue #16).
--
-- Until now a writer that took the doorbell key read the flag
-- `rowcast.doorbell.armed` with a query of its own (a plan, an executor, a
-- snapshot): a single-row UPDATE transaction of market.products with the
-- market trigger took 326,100 instructions with it, 307,300 with this file
-- (valgrind callgrind; benches/issue16/write-profile/). Here "a node is asleep" is
-- no longer a row but a second advisory key, the *bell key*, that every
-- sleeping node holds, shared, on its source connection; a writer tests it
-- with one try-and-release of the key in exclusive mode, which fails exactly
-- when some node holds it. Lock state is not versioned, so the test needs no
-- snapshot: writers in REPEATABLE READ or SERIALIZABLE no longer have to ring
-- unconditionally.
--
-- The protocol (the node's side: src/doorbell.rs, its cycle: src/source.rs):
--   writer, in each emit: take the doorbell key (7305280317090915) shared,
--     for the rest of its transaction; if that fails (a node is arming), ring.
--     Otherwise test the bell key (7305280317090916): if some node holds it,
--     ring. NOTIFY is sent at commit, so a ring announces a committed change.
--   node, to go to sleep: take the bell key shared (session level, on the
--     connection that LISTENs), then the doorbell key exclusively and
--     release it (this waits for every writer that holds it shared, i.e.
--     every writer that tested the bell key before the node took it), then
--     read; then sleep until a ring. It keeps the bell key while it reads
--     what a ring announced, and releases it, with its next read, once
--     changes are flowing (it reads every busy pause then, and takes the bell
--     key again before it next sleeps).
--   Why no change waits for the idle poll: a writer that did not ring held
--     the doorbell key from before its test until its end, and found the bell
--     key free; so every node that sleeps after that took the bell key after
--     the test, then waited for the writer to end, then read: it read the
--     change. A writer that rang is read by every node its NOTIFY reaches,
--     i.e. every node (all LISTEN), after its commit.
--   A writer that rings and then aborts sends nothing, and rings nothing
--     away: the bell key is still held, so the next writer rings too (the
--     flag's claim, which an abort had to undo, is gone).
--   Several nodes: any number hold the bell key shared at once; a writer
--     rings while any one of them sleeps.
-- The flag table and rowcast.arm_doorbell() / try_arm_doorbell() stay for
-- rowcast binaries older than this file: their arm now also takes the bell
-- key (and never releases it, since they do not know to), so against a
-- migrated database every write rings while such a node runs: correct, at
-- the cost of a per-row NOTIFY, until the node is upgraded.

CREATE OR REPLACE FUNCTION rowcast.ring() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
        -- a node is arming right now
        PERFORM pg_notify('rowcast', '');
    ELSIF (CASE WHEN pg_try_advisory_lock(7305280317090916)
                THEN NOT pg_advisory_unlock(7305280317090916)
                ELSE true END) THEN
        -- a node sleeps
        PERFORM pg_notify('rowcast', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION rowcast.emit(topics text[], event text, payload jsonb, entity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- the rule is the table's (changes_deliverable, 009_cheap_check.sql);
    -- NULLs become the empty values the rule names
    INSERT INTO rowcast.changes (topics, event, payload, entity)
    VALUES (coalesce(topics, '{}'), coalesce(event, ''), coalesce(payload, 'null'::jsonb),
            nullif(entity, ''));
    -- rowcast.ring(), inlined (the protocol is above). A transaction rings at
    -- most once in effect: PostgreSQL folds identical NOTIFYs of a transaction.
    IF NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
        PERFORM pg_notify('rowcast', '');
    ELSIF (CASE WHEN pg_try_advisory_lock(7305280317090916)
                THEN NOT pg_advisory_unlock(7305280317090916)
                ELSE true END) THEN
        PERFORM pg_notify('rowcast', '');
    END IF;
END
$$;

-- The node's arm, sent in one round trip ahead of its next read. `held`: the
-- session holds the bell key already (session locks count: taking it twice
-- would need two releases). Returns NULL when the bell key could not be taken
-- (a writer was testing it at that instant: try again), false when it is
-- held but a writer holds the doorbell key (wait with wait_for_writers() on
-- another connection, then read), true when the node may sleep after the
-- read that follows.
CREATE FUNCTION rowcast.try_arm_bell(held boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT held AND NOT pg_try_advisory_lock_shared(7305280317090916) THEN
        RETURN NULL;
    END IF;
    RETURN pg_try_advisory_xact_lock(7305280317090915);
END
$$;

-- Waits until no writer holds the doorbell key (called in autocommit: the
-- key is released at once).
CREATE FUNCTION rowcast.wait_for_writers() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7305280317090915);
END
$$;

-- Releases the bell key: writers stop ringing for this node.
CREATE FUNCTION rowcast.disarm_bell() RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_advisory_unlock_shared(7305280317090916) $$;

-- Older binaries' arms (see above): they also take the bell key, for good.
CREATE OR REPLACE FUNCTION rowcast.arm_doorbell() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock_shared(7305280317090916);
    PERFORM pg_advisory_xact_lock(7305280317090915);
    UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
END
$$;

CREATE OR REPLACE FUNCTION rowcast.try_arm_doorbell() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock_shared(7305280317090916);
    IF NOT pg_try_advisory_xact_lock(7305280317090915) THEN
        RETURN false;
    END IF;
    UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
    RETURN true;
END
$$;

-- rowcast 016: rowcast.track and rowcast.untrack know the slot; a key change
-- moves the row between topics.
--
-- * `track` on a table that the slot captures through its `rowcast_track`
--   trigger (`capture_by_slot(tbl, fn, 'rowcast_track')`) makes the trigger
--   again, disabled: the slot goes on capturing, each change once. Before,
--   the new trigger was enabled beside the slot, so a deploy script that runs
--   its `track` lines every time doubled every change of such a table. A
--   table the slot captures through another trigger is refused: a
--   `rowcast_track` trigger would capture it a second time. A partitioned
--   table counts for its partitions: `track` of the parent makes the trigger
--   of every partition (PostgreSQL clones it), and leaves it off on those the
--   slot captures.
-- * `untrack` of a table the slot captures through `rowcast_track` (or of a
--   partitioned table one of whose partitions it captures) is refused:
--   dropping the trigger left the slot capturing, and nothing that
--   `capture_by_trigger` could switch back to. Switch back first.
-- * Both take the switch lock first (rowcast.capture_switch_lock), so a
--   switch in progress and a `track` take turns: otherwise a `track` that read
--   "by the slot" before a switch back committed would make the trigger
--   disabled after it, and nothing would capture the table. The lock now
--   refuses transactions other than READ COMMITTED, for every function that
--   takes it (track, untrack and the switches of 013): in REPEATABLE READ or
--   SERIALIZABLE their reads of rowcast.captured and rowcast.capture_state
--   would come from a snapshot older than the lock, and miss the switch they
--   waited for (a track then lost or doubled every change of its table, and
--   capture_by_trigger waited for an append it could never see).
-- * rowcast.captured is readable by everyone (table oids and function
--   names), since `track` reads it with the caller's rights: the owner of a
--   table, whoever that is, may track it.
-- * Tables left captured twice by the earlier `track` (the slot capturing,
--   the trigger enabled again beside it) are repaired here: their trigger is
--   disabled, as the switch to the slot left it.
-- * An UPDATE that changes the key column: `<name>.deleted` (`{"old": ...}`)
--   on the old key's topic, then `<name>.inserted` (`{"row": ...}`) on the new
--   key's. Before, one `updated` went to the new key's topic only: clients of
--   the old topic never heard that the row left, and its snapshot kept it.
--   The `deleted` is left out when, once the statement is done (the trigger
--   fires after it), another row holds the old key: a statement that shifts
--   keys (`SET id = id + 1` on a DEFERRABLE key) moves every row onto a key
--   that stays taken, and `deleted` there would mark a live row gone.
--
-- * `track` refuses a table whose name holds a line break: its events would
--   be named with it, and SSE carries an event's name on its `event:` line.
--
-- Otherwise as in 004_track.sql and 007_lean_emit.sql.

CREATE OR REPLACE FUNCTION rowcast.track_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    keycol text := TG_ARGV[1];
    evname text := CASE WHEN TG_NARGS >= 3 THEN TG_ARGV[2] ELSE TG_TABLE_NAME END;
    rec    jsonb;
    was    jsonb;  -- OLD as JSON (a variable named old would hide OLD)
    body   jsonb;
    verb   text;
    k      text;
    keytype text;
    taken  boolean;
    done   text;  -- emit's void result, discarded
BEGIN
    IF TG_OP = 'INSERT' THEN
        rec := to_jsonb(NEW); verb := 'inserted';
        body := jsonb_build_object('row', rec);
    ELSIF TG_OP = 'UPDATE' THEN
        rec := to_jsonb(NEW); was := to_jsonb(OLD); verb := 'updated';
        body := jsonb_build_object('row', rec, 'old', was);
    ELSE
        rec := to_jsonb(OLD); verb := 'deleted';
        body := jsonb_build_object('old', rec);
    END IF;
    k := rec ->> keycol;
    IF k IS NULL THEN
        -- the key column was renamed or dropped after track(), or allows NULL
        -- (first-version triggers): refuse rather than write a change with no topic
        RAISE EXCEPTION 'rowcast.track on %.%: key column % is missing or NULL',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, keycol
            USING HINT = 'call rowcast.track on the table again, with an existing NOT NULL key_column';
    END IF;
    IF (was ->> keycol) <> k THEN
        -- the row leaves its old key's topic (unless another row took that
        -- key in the same statement) and enters the new key's
        SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
          FROM pg_attribute a WHERE a.attrelid = TG_RELID AND a.attname = keycol;
        BEGIN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I = $1::%s)',
                           TG_RELID::regclass, keycol, keytype)
               INTO taken USING was ->> keycol;
        EXCEPTION WHEN insufficient_privilege THEN
            taken := false;  -- a writer that may not read the table: as if free
        END;
        IF NOT taken THEN
            done := rowcast.emit(ARRAY[prefix || '-' || (was ->> keycol)], evname || '.deleted',
                                 jsonb_build_object('old', was))::text;
        END IF;
        verb := 'inserted';
        body := jsonb_build_object('row', rec);
    END IF;
    done := rowcast.emit(ARRAY[prefix || '-' || k], evname || '.' || verb, body)::text;
    RETURN NULL;
END
$$;

-- What the slot captures of a table: the table itself and, when it is
-- partitioned, its partitions (a trigger made on a partitioned table is
-- cloned onto each), each with the trigger the switch turned off.
CREATE FUNCTION rowcast.slot_captured(tbl regclass)
RETURNS TABLE (relid regclass, trigger_name name)
LANGUAGE sql STABLE AS $$
    SELECT c.relid, c.trigger_name FROM rowcast.captured c
     WHERE c.by_slot
       AND c.relid IN (SELECT tbl UNION SELECT p.relid FROM pg_partition_tree(tbl) p)
$$;

-- The switch lock (013), in READ COMMITTED only: whoever takes it reads
-- rowcast.captured and rowcast.capture_state after it, which only READ
-- COMMITTED reads as of then.
CREATE OR REPLACE FUNCTION rowcast.capture_switch_lock() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'rowcast: track, untrack and the capture switches run in READ COMMITTED only, not %',
                current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'call it in a READ COMMITTED transaction (PostgreSQL''s default)';
    END IF;
    PERFORM pg_advisory_xact_lock(7305280317090920);
END
$$;

-- Disables rowcast_track where the slot captures through it: on `tbl` and on
-- its partitions.
CREATE FUNCTION rowcast.capture_keep_off(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.relid FROM rowcast.slot_captured(tbl) c
              WHERE c.trigger_name = 'rowcast_track'
                AND EXISTS (SELECT 1 FROM pg_trigger g
                             WHERE g.tgrelid = c.relid AND g.tgname = 'rowcast_track' AND g.tgenabled <> 'D')
    LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER rowcast_track', t);
    END LOOP;
END
$$;

GRANT SELECT ON rowcast.captured TO PUBLIC;

-- The repair: tables the slot captures whose trigger the earlier `track`
-- enabled again (any trigger the switch named).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT x.relid, x.trigger_name FROM rowcast.captured x
              WHERE x.by_slot
                AND EXISTS (SELECT 1 FROM pg_trigger g
                             WHERE g.tgrelid = x.relid AND g.tgname = x.trigger_name AND g.tgenabled <> 'D')
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', c.relid, c.trigger_name);
            RAISE WARNING 'rowcast: % was captured twice (by the slot and by its trigger %, enabled again by rowcast.track): its trigger is off again', c.relid, c.trigger_name;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'rowcast: % is captured twice (by the slot and by its trigger %, enabled again by rowcast.track), and this role may not alter it', c.relid, c.trigger_name
                USING HINT = format('as its owner: ALTER TABLE %s DISABLE TRIGGER %I', c.relid, c.trigger_name);
        END;
    END LOOP;
END
$$;

-- Drops `tbl`'s rowcast_track trigger if it has one (DROP TRIGGER IF EXISTS
-- would print a NOTICE when it has none; track and untrack print none).
CREATE FUNCTION rowcast.drop_track_trigger(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rowcast_track') THEN
        EXECUTE format('DROP TRIGGER rowcast_track ON %s', tbl);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION rowcast.track(tbl regclass, topic_prefix text DEFAULT NULL, key_column text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    schema  text;
    relname text;
    keycol  text := key_column;
    name    text;
    prefix  text;
    key_not_null boolean;
    slot_trigger text;
BEGIN
    SELECT n.nspname, c.relname INTO schema, relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    name := CASE WHEN schema = 'public' THEN relname ELSE schema || '.' || relname END;
    prefix := coalesce(topic_prefix, name);
    IF prefix = '' OR prefix ~ '[,[:cntrl:]]' THEN
        RAISE EXCEPTION 'rowcast.track(%): topic prefix % is empty or holds a comma or control character', tbl, quote_literal(prefix)
            USING HINT = 'pass a topic_prefix clients can subscribe to';
    END IF;
    IF keycol IS NULL THEN
        SELECT a.attname INTO keycol
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = tbl AND i.indisprimary AND i.indnkeyatts = 1;
        IF keycol IS NULL THEN
            RAISE EXCEPTION 'rowcast.track(%): no single-column primary key; pass key_column', tbl;
        END IF;
    END IF;
    SELECT a.attnotnull INTO key_not_null
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rowcast.track(%): there is no column %', tbl, quote_ident(keycol);
    END IF;
    IF NOT key_not_null THEN
        RAISE EXCEPTION 'rowcast.track(%): key column % allows NULL, and a row without a key has no topic', tbl, quote_ident(keycol)
            USING HINT = 'use a NOT NULL column (the primary key is one)';
    END IF;
    IF name ~ '[\r\n]' THEN
        RAISE EXCEPTION 'rowcast.track(%): the table''s name holds a line break, which its events'' names would carry and SSE cannot', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rename the table, or capture it with a trigger of your own that calls rowcast.emit';
    END IF;
    PERFORM rowcast.capture_switch_lock();
    SELECT string_agg(format('%s (its trigger %I is off)', c.relid, c.trigger_name), ', ') INTO slot_trigger
      FROM rowcast.slot_captured(tbl) c WHERE c.trigger_name <> 'rowcast_track';
    IF slot_trigger IS NOT NULL THEN
        RAISE EXCEPTION 'rowcast.track(%): the slot captures %; a rowcast_track trigger would capture every change again', tbl, slot_trigger
            USING ERRCODE = 'object_in_use',
                  HINT = 'switch it back with rowcast.capture_by_trigger first';
    END IF;
    PERFORM rowcast.drop_track_trigger(tbl);
    EXECUTE format(
        'CREATE TRIGGER rowcast_track AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION rowcast.track_trigger(%L, %L, %L)',
        tbl, prefix, keycol, name);
    -- where the slot captures (the table, or partitions of it): the trigger
    -- waits there, off, for capture_by_trigger
    PERFORM rowcast.capture_keep_off(tbl);
END
$$;

CREATE OR REPLACE FUNCTION rowcast.untrack(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    by_slot text;
BEGIN
    PERFORM rowcast.capture_switch_lock();
    SELECT string_agg(c.relid::text, ', ') INTO by_slot
      FROM rowcast.slot_captured(tbl) c WHERE c.trigger_name = 'rowcast_track';
    IF by_slot IS NOT NULL THEN
        RAISE EXCEPTION 'rowcast.untrack(%): the slot captures %; untrack would leave it capturing, with no trigger to switch back to', tbl, by_slot
            USING ERRCODE = 'object_in_use',
                  HINT = 'switch it back with rowcast.capture_by_trigger first, then untrack';
    END IF;
    PERFORM rowcast.drop_track_trigger(tbl);
END
$$;

-- rowcast 016: rowcast.track and rowcast.untrack know the slot; a key change
-- moves the row between topics.
--
-- * `track` on a table that the slot captures through its `rowcast_track`
--   trigger (`capture_by_slot(tbl, fn, 'rowcast_track')`) makes the trigger
--   again, disabled: the slot goes on capturing, each change once. Before,
--   the new trigger was enabled beside the slot, so a deploy script that runs
--   its `track` lines every time doubled every change of such a table. A
--   table the slot captures through another trigger is refused: a
--   `rowcast_track` trigger would capture it a second time.
-- * `untrack` of a table the slot captures through `rowcast_track` is
--   refused: dropping the trigger left the slot capturing, and nothing that
--   `capture_by_trigger` could switch back to. Switch back first.
-- * Both take the switch lock first (rowcast.capture_switch_lock), so a
--   switch in progress and a `track` take turns: otherwise a `track` that read
--   "by the slot" before a switch back committed would make the trigger
--   disabled after it, and nothing would capture the table.
-- * An UPDATE that changes the key column: `<name>.deleted` (`{"old": ...}`)
--   on the old key's topic, then `<name>.inserted` (`{"row": ...}`) on the new
--   key's. Before, one `updated` went to the new key's topic only: clients of
--   the old topic never heard that the row left, and its snapshot kept it.
--
-- * An event name with a line break (CR or LF) is refused like an empty one
--   (rowcast.deliverable, the log's rule): SSE carries the name on an
--   `event:` line, which cannot hold one, so such an event reached
--   EventSource clients under another name.
--
-- Otherwise as in 004_track.sql, 007_lean_emit.sql and 009_cheap_check.sql.

CREATE OR REPLACE FUNCTION rowcast.deliverable(topics text[], event text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- one test for the usual case; the detailed ones only to name the error
    -- (IS NOT TRUE: a NULL makes the test NULL, not false)
    IF (cardinality(topics) > 0 AND array_ndims(topics) = 1
        AND array_position(topics, NULL) IS NULL
        AND array_position(topics, '') IS NULL
        AND event <> '' AND strpos(event, E'\n') = 0 AND strpos(event, E'\r') = 0) IS NOT TRUE THEN
        IF topics IS NULL OR cardinality(topics) = 0 THEN
            RAISE EXCEPTION 'rowcast: at least one topic is required'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF array_ndims(topics) <> 1 OR array_position(topics, NULL) IS NOT NULL
           OR array_position(topics, '') IS NOT NULL THEN
            RAISE EXCEPTION 'rowcast: topics must be non-empty text, got %', topics
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF event <> '' THEN
            RAISE EXCEPTION 'rowcast: an event name is one line, got %', quote_literal(event)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE EXCEPTION 'rowcast: an event name is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN true;
END
$$;

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
        -- the row leaves its old key's topic and enters the new key's
        done := rowcast.emit(ARRAY[prefix || '-' || (was ->> keycol)], evname || '.deleted',
                             jsonb_build_object('old', was))::text;
        verb := 'inserted';
        body := jsonb_build_object('row', rec);
    END IF;
    done := rowcast.emit(ARRAY[prefix || '-' || k], evname || '.' || verb, body)::text;
    RETURN NULL;
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
    slot_trigger name;
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
    PERFORM rowcast.capture_switch_lock();
    SELECT c.trigger_name INTO slot_trigger FROM rowcast.captured c WHERE c.relid = tbl AND c.by_slot;
    IF slot_trigger <> 'rowcast_track' THEN
        RAISE EXCEPTION 'rowcast.track(%): the slot captures this table (its trigger % is off); a rowcast_track trigger would capture every change again', tbl, quote_ident(slot_trigger)
            USING ERRCODE = 'object_in_use',
                  HINT = 'switch the table back with rowcast.capture_by_trigger first';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rowcast_track') THEN
        EXECUTE format('DROP TRIGGER rowcast_track ON %s', tbl);
    END IF;
    EXECUTE format(
        'CREATE TRIGGER rowcast_track AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION rowcast.track_trigger(%L, %L, %L)',
        tbl, prefix, keycol, name);
    IF slot_trigger IS NOT NULL THEN
        -- the slot captures it: the trigger waits, off, for capture_by_trigger
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER rowcast_track', tbl);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION rowcast.untrack(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rowcast.capture_switch_lock();
    IF EXISTS (SELECT 1 FROM rowcast.captured c
                WHERE c.relid = tbl AND c.by_slot AND c.trigger_name = 'rowcast_track') THEN
        RAISE EXCEPTION 'rowcast.untrack(%): the slot captures this table; untrack would leave it capturing, with no trigger to switch back to', tbl
            USING ERRCODE = 'object_in_use',
                  HINT = 'switch the table back with rowcast.capture_by_trigger first, then untrack';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rowcast_track') THEN
        EXECUTE format('DROP TRIGGER rowcast_track ON %s', tbl);
    END IF;
END
$$;

-- rowcast.track, second version.
--
-- * Names are unique across schemas by default: a table outside `public` gets
--   topics `<schema>.<table>-<key>` and events `<schema>.<table>.inserted|
--   updated|deleted`, so `a.items` and `b.items` no longer share topics and
--   events; tables in `public` keep the short form (`products-1`,
--   `products.updated`). An explicit topic_prefix still names the topics.
-- * The key column must exist and be NOT NULL: a change whose key is NULL
--   would have no topic (and a NULL topic stops delivery for everyone).
-- * Tracking a table again, or untracking an untracked one, raises no NOTICE.
--
-- Tables tracked with the first version keep their triggers, names and
-- behaviour until `rowcast.track` is called on them again.

-- TG_ARGV[0]: topic prefix; TG_ARGV[1]: key column; TG_ARGV[2]: event prefix
-- (triggers made by the first version have no TG_ARGV[2]: the table name).
CREATE OR REPLACE FUNCTION rowcast.track_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    keycol text := TG_ARGV[1];
    evname text := CASE WHEN TG_NARGS >= 3 THEN TG_ARGV[2] ELSE TG_TABLE_NAME END;
    rec    jsonb;
    body   jsonb;
    verb   text;
    k      text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        rec := to_jsonb(NEW); verb := 'inserted';
        body := jsonb_build_object('row', rec);
    ELSIF TG_OP = 'UPDATE' THEN
        rec := to_jsonb(NEW); verb := 'updated';
        body := jsonb_build_object('row', rec, 'old', to_jsonb(OLD));
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
    PERFORM rowcast.emit(ARRAY[prefix || '-' || k], evname || '.' || verb, body);
    RETURN NULL;
END
$$;

-- Attach change capture to an existing table with one statement:
--   SELECT rowcast.track('public.products');   -- products-<id>, products.updated
--   SELECT rowcast.track('shop.items');        -- shop.items-<id>, shop.items.updated
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
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rowcast_track') THEN
        EXECUTE format('DROP TRIGGER rowcast_track ON %s', tbl);
    END IF;
    EXECUTE format(
        'CREATE TRIGGER rowcast_track AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION rowcast.track_trigger(%L, %L, %L)',
        tbl, prefix, keycol, name);
END
$$;

CREATE OR REPLACE FUNCTION rowcast.untrack(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rowcast_track') THEN
        EXECUTE format('DROP TRIGGER rowcast_track ON %s', tbl);
    END IF;
END
$$;

-- Presence: online, away, offline, by the time since a user's last activity.
--
-- State lives here, not in any rowcast node: a node that crashes takes no
-- presence with it (no ghosts), a reconnect changes nothing (no flapping),
-- and every transition is a change in the change log like any other,
-- emitted exactly once inside the transaction that changes the status.
--
--   online   active less than `away` ago            (FR-021: 5 minutes)
--   away     active between `away` and `offline` ago (FR-021: 60 minutes)
--   offline  longer, or never
--
-- The thresholds are the nodes' configuration (--presence-away,
-- --presence-offline), passed to every function that needs them; all nodes
-- of one database must use the same ones.

CREATE TABLE rowcast.presence (
    user_id        text        PRIMARY KEY CHECK (user_id <> ''),
    last_active_at timestamptz NOT NULL,
    status         text        NOT NULL CHECK (status IN ('online', 'away', 'offline'))
);
-- the sweep looks only at users not yet offline
CREATE INDEX presence_live ON rowcast.presence (last_active_at) WHERE status <> 'offline';

-- Who a token's claims are, for presence: the user id their activity
-- counts for, or NULL (anonymous clients cannot report activity).
-- The core default is the `sub` claim; an app whose user ids of different
-- kinds share a number space replaces it (the market: 'farmer-101').
CREATE FUNCTION rowcast.presence_user(claims jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT nullif(claims ->> 'sub', '') $$;

-- The status that `last_active_at` means now.
CREATE FUNCTION rowcast.presence_status(last_active_at timestamptz, away interval, offline interval)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN last_active_at IS NULL OR last_active_at <= clock_timestamp() - offline THEN 'offline'
        WHEN last_active_at <= clock_timestamp() - away THEN 'away'
        ELSE 'online'
    END
$$;

-- Where a transition goes. The core default: `user.presence` on
-- presence-<user_id>, data {"userId","status","lastActiveAt"} (ms since the
-- epoch). Apps replace it to add topics or data (the market adds a farmer's
-- public farm-<id> topics with "farmId"); keep `entity` => 'presence-' ||
-- user_id so that a snapshot holds one presence per user.
CREATE FUNCTION rowcast.presence_changed(user_id text, status text, last_active_at timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rowcast.emit(
        ARRAY['presence-' || user_id],
        'user.presence',
        jsonb_build_object(
            'userId', user_id,
            'status', status,
            'lastActiveAt', (extract(epoch FROM last_active_at) * 1000)::bigint),
        'presence-' || user_id);
END
$$;

-- Emits a transition whenever a row's status changes, in the same transaction.
CREATE FUNCTION rowcast.presence_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM rowcast.presence_changed(NEW.user_id, NEW.status, NEW.last_active_at);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER presence_transition AFTER INSERT OR UPDATE OF status ON rowcast.presence
    FOR EACH ROW EXECUTE FUNCTION rowcast.presence_transition();

-- Activity: the one writer of `last_active_at`. Any app may call it from its
-- own SQL (a farmer saving a product counts as activity). Returns true when
-- the user became online (a transition was emitted), false when they already
-- were.
CREATE FUNCTION rowcast.touch(user_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    was text;
BEGIN
    IF user_id IS NULL OR user_id = '' THEN
        RAISE EXCEPTION 'rowcast.touch: a user id is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.status INTO was FROM rowcast.presence p WHERE p.user_id = touch.user_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rowcast.presence VALUES (touch.user_id, clock_timestamp(), 'online')
        ON CONFLICT ON CONSTRAINT presence_pkey DO UPDATE
            SET last_active_at = greatest(presence.last_active_at, excluded.last_active_at),
                status = 'online';
        RETURN was IS DISTINCT FROM 'online';
    END IF;
    UPDATE rowcast.presence p
       SET last_active_at = greatest(p.last_active_at, clock_timestamp()),
           status = 'online'
     WHERE p.user_id = touch.user_id;
    RETURN was <> 'online';
END
$$;

-- Time-driven transitions (online → away → offline), for every user whose
-- status no longer matches their last activity. Any node may run it at any
-- time, several at once: each row's UPDATE re-checks its condition on the
-- row it locks, so a transition another sweep (or a touch) already made is
-- not made again: exactly once, cluster-wide. Returns the transitions made.
CREATE FUNCTION rowcast.presence_sweep(away interval, offline interval)
RETURNS TABLE (user_id text, status text)
LANGUAGE sql AS $$
    UPDATE rowcast.presence p
       SET status = rowcast.presence_status(p.last_active_at, away, offline)
     WHERE p.status <> 'offline'
       AND p.last_active_at <= clock_timestamp() - away
       AND p.status <> rowcast.presence_status(p.last_active_at, away, offline)
    RETURNING p.user_id, p.status
$$;

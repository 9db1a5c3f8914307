-- The topics of Socket.IO sessions, for Connection State Recovery on any
-- node (src/transport/socketio/rooms.rs states the contract).
--
-- One row per session, keyed by the random key in its pid: `topics` NULL
-- while the session has its connect-time topics, else the set its
-- `subscribe` / `unsubscribe` left it with. `identity` is the pid's identity
-- digest, checked again on recovery; `peer` the address (IPv6: its /64)
-- of the client that stored the row, for the cap on rows per address (NULL
-- on a node's "connect-time" row); `gen` counts recoveries, so a
-- stale connection of the session cannot overwrite a newer one's topics.
-- The node that serves a session marks its row seen now and then; every
-- node deletes rows not seen for longer than a recovery may take. `session`
-- sorts in byte order, the order every node locks rows in (no deadlocks).
CREATE TABLE rowcast.socketio_rooms (
    session  text COLLATE "C" PRIMARY KEY,
    identity bigint NOT NULL,
    peer     inet,
    topics   text[],
    gen      integer NOT NULL DEFAULT 0,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX socketio_rooms_seen ON rowcast.socketio_rooms (seen_at);
CREATE INDEX socketio_rooms_peer ON rowcast.socketio_rooms (peer, seen_at) WHERE peer IS NOT NULL;

-- The topics of Socket.IO sessions that joined or left topics after their
-- CONNECT (`subscribe` / `unsubscribe`), so that Connection State Recovery
-- re-joins exactly those topics on any node (src/transport/socketio/rooms.rs).
--
-- One row per such session, keyed by the random key in its pid; `identity`
-- is the pid's identity digest, checked again on recovery. A session with no
-- row recovers its connect-time topics. The node that serves a session marks
-- its row seen now and then; every node deletes rows not seen for longer than
-- a recovery could still be exact (the retention plus two marking intervals).
CREATE TABLE rowcast.socketio_rooms (
    session  text PRIMARY KEY,
    identity bigint NOT NULL,
    topics   text[] NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX socketio_rooms_seen ON rowcast.socketio_rooms (seen_at);

-- Topics every connection of an identity joins without asking for them.
--
-- Socket.IO clients written for FR-021 never subscribe explicitly: they
-- connect and expect their order updates. rowcast asks
-- rowcast.default_topics(claims) when a Socket.IO client connects and joins
-- what it returns, after the same rowcast.authorize check as any topic. The
-- core default joins nothing; an app replaces it (sql/market/ does).
CREATE FUNCTION rowcast.default_topics(claims jsonb) RETURNS text[]
LANGUAGE sql STABLE AS $$ SELECT '{}'::text[] $$;

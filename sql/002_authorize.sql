-- Topic authorization, beside the data it protects.
--
-- rowcast calls rowcast.authorize(claims, topic) for every topic of every
-- subscribe, on every transport. `claims` is the verified JWT payload
-- ({"sub": "...", "role": "...", "exp": ..., ...}), or '{}' for an anonymous
-- client (no token, or no JWT configured). Only `true` allows; false, NULL or
-- an error deny. Answers are cached by rowcast for a few seconds per exact claims.
--
-- This core default ALLOWS EVERY TOPIC TO EVERYONE: it keeps an app that plugs
-- rowcast in without a policy working as before. Any app whose topics carry
-- private data must replace it (CREATE OR REPLACE FUNCTION rowcast.authorize ...);
-- sql/market/002_authorize.sql is a worked example.
CREATE FUNCTION rowcast.authorize(claims jsonb, topic text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT true $$;

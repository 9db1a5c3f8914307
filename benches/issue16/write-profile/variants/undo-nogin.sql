CREATE INDEX changes_topics ON rowcast.changes USING gin (topics);

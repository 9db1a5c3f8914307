DROP INDEX rowcast.changes_topics;

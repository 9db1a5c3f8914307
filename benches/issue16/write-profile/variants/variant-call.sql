ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (('' <> ALL (topics)) IS TRUE AND cardinality(topics) > 0 AND array_ndims(topics) = 1 AND event <> '') NOT VALID;

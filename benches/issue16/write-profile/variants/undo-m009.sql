ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (cardinality(topics) > 0 AND array_ndims(topics) = 1 AND array_position(topics, NULL) IS NULL AND array_position(topics, '') IS NULL AND event <> '') NOT VALID;
DROP FUNCTION rowcast.deliverable(text[], text);

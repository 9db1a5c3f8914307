ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (array_ndims(topics) IS NOT DISTINCT FROM 1 AND array_position(topics, NULL) IS NULL AND NOT topics @> '{""}' AND event <> '') NOT VALID;

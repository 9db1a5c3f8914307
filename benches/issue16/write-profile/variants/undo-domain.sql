ALTER TABLE rowcast.changes ALTER COLUMN topics TYPE text[], ALTER COLUMN event TYPE text;
DROP DOMAIN rowcast.topic_list;
DROP DOMAIN rowcast.event_name;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (cardinality(topics) > 0 AND array_ndims(topics) = 1 AND array_position(topics, NULL) IS NULL AND array_position(topics, '') IS NULL AND event <> '') NOT VALID;

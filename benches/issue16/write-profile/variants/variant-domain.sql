ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
CREATE DOMAIN rowcast.topic_list AS text[] CHECK (cardinality(VALUE) > 0 AND array_ndims(VALUE) = 1 AND array_position(VALUE, NULL) IS NULL AND array_position(VALUE, '') IS NULL);
CREATE DOMAIN rowcast.event_name AS text CHECK (VALUE <> '');
ALTER TABLE rowcast.changes ALTER COLUMN topics TYPE rowcast.topic_list, ALTER COLUMN event TYPE rowcast.event_name;

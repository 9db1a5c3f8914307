ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
CREATE OR REPLACE FUNCTION rowcast.deliverable(topics text[], event text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
    RETURN coalesce(cardinality(topics) > 0 AND array_ndims(topics) = 1
        AND array_position(topics, NULL) IS NULL AND array_position(topics, '') IS NULL
        AND event <> '', false);
END $f$;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (rowcast.deliverable(topics, event)) NOT VALID;

ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;

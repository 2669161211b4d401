-- A worker's intent, recorded just before it writes an object (JSON, see `store::Intent`):
-- action, source format, the source's ETag and version id. A crash between the write and the
-- outcome update would otherwise lose the way back (the replaced version id): the next attempt
-- finds the object already current and, seeing an intent whose source ETag is no longer
-- there, records the earlier write from it. Cleared when an outcome is recorded; a rescan's
-- reset leaves it alone.
ALTER TABLE jobs ADD COLUMN intent TEXT;

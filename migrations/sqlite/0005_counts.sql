-- Counters for `status` (`JobStore::counts`, `state_counts`): objects and bytes per (state,
-- source format, action, skip reason), kept by triggers in the same transaction as every
-- insert, update and delete of `jobs`, so they are exactly what a GROUP BY over `jobs` would
-- return, and `status` reads a few dozen rows instead of every job (23.6 s at 10M jobs).
-- PostgreSQL twin: migrations/postgres/0005_counts.sql (the same table plus a `slot` column).
--
-- NULL is spelled '' and a value v is spelled '.' || v, so the key columns are NOT NULL (a
-- primary key treats NULLs as distinct) and the mapping stays one to one for every value,
-- the empty string included. Groups whose count falls to 0 stay as 0 rows; readers skip them.
CREATE TABLE job_counts (
    state         TEXT    NOT NULL,
    source_format TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    skip_reason   TEXT    NOT NULL,
    objects       INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    PRIMARY KEY (state, source_format, action, skip_reason)
) STRICT, WITHOUT ROWID;

-- SQLite has one writer at a time, so a trigger per row is enough (no hot-row contention).
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts VALUES (NEW.state, coalesce('.' || NEW.source_format, ''),
        coalesce('.' || NEW.action, ''), coalesce('.' || NEW.skip_reason, ''), 1, NEW.size)
    ON CONFLICT (state, source_format, action, skip_reason)
    DO UPDATE SET objects = objects + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET objects = objects - 1, bytes = bytes - OLD.size
    WHERE state = OLD.state AND source_format = coalesce('.' || OLD.source_format, '')
      AND action = coalesce('.' || OLD.action, '')
      AND skip_reason = coalesce('.' || OLD.skip_reason, '');
END;

-- Only updates that move a row between groups or change its size: lease renewals, intents
-- and checkpoints pay nothing.
CREATE TRIGGER jobs_count_update
AFTER UPDATE OF state, source_format, action, skip_reason, size ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.source_format IS NOT NEW.source_format
  OR OLD.action IS NOT NEW.action OR OLD.skip_reason IS NOT NEW.skip_reason
  OR OLD.size IS NOT NEW.size
BEGIN
    UPDATE job_counts SET objects = objects - 1, bytes = bytes - OLD.size
    WHERE state = OLD.state AND source_format = coalesce('.' || OLD.source_format, '')
      AND action = coalesce('.' || OLD.action, '')
      AND skip_reason = coalesce('.' || OLD.skip_reason, '');
    INSERT INTO job_counts VALUES (NEW.state, coalesce('.' || NEW.source_format, ''),
        coalesce('.' || NEW.action, ''), coalesce('.' || NEW.skip_reason, ''), 1, NEW.size)
    ON CONFLICT (state, source_format, action, skip_reason)
    DO UPDATE SET objects = objects + 1, bytes = bytes + excluded.bytes;
END;

-- Existing state files: one GROUP BY, once (the migration holds the write lock).
INSERT INTO job_counts
SELECT state, coalesce('.' || source_format, ''), coalesce('.' || action, ''),
       coalesce('.' || skip_reason, ''), count(*), sum(size)
FROM jobs GROUP BY 1, 2, 3, 4;

-- `status`'s first and last finished_at (its rate and ETA): one index probe each. Partial,
-- so the enqueue (finished_at NULL) does not pay for it.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

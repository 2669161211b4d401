-- PostgreSQL twin of migrations/sqlite/0005_counts.sql: counters for `status`, kept exactly
-- in the same transaction as every change to `jobs`. Two differences, both because many
-- processes write `jobs` at once here:
-- * Statement-level triggers with transition tables: one statement (a claim of 16 rows, a
--   page of 1,000) adds its net change per group once, not once per row, and a statement
--   that moves no row between groups (a lease renewal) writes nothing.
-- * A `slot` column: each connection adds to its own copy of a group (pg_backend_pid() % 16),
--   so concurrent workers do not queue on one hot counter row until their commits; readers
--   sum the slots. Each statement upserts its groups in key order, so two one-statement
--   transactions (claims, outcomes, a page of up to 10,000 rows) cannot deadlock on them.
--   A transaction of several `jobs` statements (`--manifest-batch` above 10,000 rows) could,
--   with another in the same slot resetting rows of other groups; PostgreSQL then aborts
--   one, and its batch is rolled back whole (not seen in tests).
-- NULL is spelled '' and a value v is '.' || v, as on SQLite (key columns cannot be NULL).
CREATE TABLE job_counts (
    state         TEXT     NOT NULL,
    source_format TEXT     NOT NULL,
    action        TEXT     NOT NULL,
    skip_reason   TEXT     NOT NULL,
    slot          SMALLINT NOT NULL,
    objects       BIGINT   NOT NULL,
    bytes         BIGINT   NOT NULL,
    PRIMARY KEY (state, source_format, action, skip_reason, slot)
);

-- The net change of one statement, from its transition tables (`old_rows` leave their
-- groups, `new_rows` join theirs), added to this connection's slot.
CREATE FUNCTION job_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts AS c
        SELECT state, coalesce('.' || source_format, ''), coalesce('.' || action, ''),
               coalesce('.' || skip_reason, ''), pg_backend_pid() % 16, count(*), sum(size)
        FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (state, source_format, action, skip_reason, slot)
        DO UPDATE SET objects = c.objects + EXCLUDED.objects, bytes = c.bytes + EXCLUDED.bytes;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_counts AS c
        SELECT state, coalesce('.' || source_format, ''), coalesce('.' || action, ''),
               coalesce('.' || skip_reason, ''), pg_backend_pid() % 16, -count(*), -sum(size)
        FROM old_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (state, source_format, action, skip_reason, slot)
        DO UPDATE SET objects = c.objects + EXCLUDED.objects, bytes = c.bytes + EXCLUDED.bytes;
    ELSE
        INSERT INTO job_counts AS c
        SELECT state, f, a, r, pg_backend_pid() % 16, sum(n), sum(b)
        FROM (SELECT state, coalesce('.' || source_format, '') AS f,
                     coalesce('.' || action, '') AS a, coalesce('.' || skip_reason, '') AS r,
                     1 AS n, size AS b FROM new_rows
              UNION ALL
              SELECT state, coalesce('.' || source_format, ''), coalesce('.' || action, ''),
                     coalesce('.' || skip_reason, ''), -1, -size FROM old_rows) d
        GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 OR sum(b) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (state, source_format, action, skip_reason, slot)
        DO UPDATE SET objects = c.objects + EXCLUDED.objects, bytes = c.bytes + EXCLUDED.bytes;
    END IF;
    RETURN NULL;
END $$;

-- The triggers first: CREATE TRIGGER locks out writers of `jobs` until this migration
-- commits, so the backfill below and the triggers see the same rows.
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();
-- (A trigger with transition tables cannot name columns: renewals fire it, add nothing.)
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();

INSERT INTO job_counts
SELECT state, coalesce('.' || source_format, ''), coalesce('.' || action, ''),
       coalesce('.' || skip_reason, ''), 0, count(*), sum(size)
FROM jobs GROUP BY 1, 2, 3, 4;

CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

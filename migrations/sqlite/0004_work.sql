-- Listing and manifest ingest as claimable work items (src/store/work.rs), so several listers
-- (tasks of one process, or processes sharing a PostgreSQL queue) list one bucket together and
-- several ingesters read one manifest together. Each item is leased like a job row: a dead
-- lister's or ingester's item lapses and is resumed from its checkpoint by another.
--
-- A "scan" is identified as in `scans`: (bucket, scan_prefix, shard), shard '' or 'I/N'.
-- Times (lease_until, created_at, updated_at) are unix MILLISECONDS bound by the caller (no
-- unixepoch()/now() in statements, so the statements port to PostgreSQL as they are): a pass
-- a peer finished during this run is told from one finished before the run started.

-- One key range of a listing: the keys k under `prefix` with start_at <= k < end_before
-- (end_before NULL: no upper bound), listed with ListObjectsV2 Prefix = prefix and
-- StartAfter = cursor (NULL: from the start). A split shortens end_before and inserts the
-- range above it in one transaction; the owner drops keys >= its end_before at its next page.
-- `delimiter` '/' marks the seeding range of a sharded scan: a Delimiter listing whose loose
-- keys are enqueued and whose common prefixes become ranges of their own (this shard's only).
CREATE TABLE list_ranges (
    id          INTEGER PRIMARY KEY,
    bucket      TEXT    NOT NULL,
    scan_prefix TEXT    NOT NULL,
    shard       TEXT    NOT NULL,
    prefix      TEXT    NOT NULL,
    delimiter   TEXT,
    -- '' (the smallest string) when the range has no lower bound.
    start_at    TEXT    NOT NULL DEFAULT '',
    end_before  TEXT,
    cursor      TEXT,
    -- Keys enqueued from this range (after the end_before filter).
    listed      INTEGER NOT NULL DEFAULT 0 CHECK (listed >= 0),
    state       TEXT    NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'running', 'done')),
    lease_owner TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (bucket, scan_prefix, shard, prefix, start_at)
) STRICT;

CREATE INDEX list_ranges_state ON list_ranges (bucket, scan_prefix, shard, state);

-- One data file of a manifest (an Inventory data file, or the one Batch Operations CSV):
-- `line` is the checkpoint, the lines of the file already enqueued.
CREATE TABLE manifest_files (
    id          INTEGER PRIMARY KEY,
    bucket      TEXT    NOT NULL,
    scan_prefix TEXT    NOT NULL,
    shard       TEXT    NOT NULL,
    manifest    TEXT    NOT NULL,
    file_index  INTEGER NOT NULL CHECK (file_index >= 0),
    -- The data file's URL or path, for `status` and to notice a manifest rewritten in place.
    name        TEXT    NOT NULL,
    line        INTEGER NOT NULL DEFAULT 0 CHECK (line >= 0),
    -- Data rows read (all of them: enqueued, outside, malformed, skipped).
    rows        INTEGER NOT NULL DEFAULT 0 CHECK (rows >= 0),
    state       TEXT    NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'running', 'done')),
    lease_owner TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (bucket, scan_prefix, shard, manifest, file_index)
) STRICT;

CREATE INDEX manifest_files_state ON manifest_files (bucket, scan_prefix, shard, manifest, state);

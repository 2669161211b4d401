-- Job table of `s3cse rekey`: one row per (bucket, key), written by the scanner
-- (`JobStore::enqueue_page`) and leased to workers (`JobStore::claim`).
--
-- Timestamps are INTEGER unix seconds (`unixepoch()`); `lease_until` is compared with
-- `unixepoch()` by the claim statement. STRICT so a wrongly typed bind is an error, not a
-- silently coerced value.

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    bucket              TEXT    NOT NULL,
    key                 TEXT    NOT NULL,
    -- Version of the source object the worker read (NULL on unversioned buckets / not yet read).
    version_id          TEXT,
    -- ETag as listed; the scanner compares it with the next listing to detect changed objects.
    etag                TEXT    NOT NULL,
    size                INTEGER NOT NULL CHECK (size >= 0),
    last_modified       TEXT,
    storage_class       TEXT,
    state               TEXT    NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'running', 'done', 'failed', 'conflict')),
    -- Set by the worker once it has classified the object, e.g. 'v1-aes', 'v2-kms-gcm'.
    source_format       TEXT,
    action              TEXT    CHECK (action IN ('rewrite', 'rewrap', 'skip')),
    -- Why an object was skipped, e.g. 'plaintext', 'current', 'instruction-file'.
    skip_reason         TEXT,
    -- Claims so far (a graceful stop gives its attempt back, see `release`).
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Times the object changed under a worker (412 on the conditional write) and was requeued.
    conflicts           INTEGER NOT NULL DEFAULT 0 CHECK (conflicts >= 0),
    last_error          TEXT,
    error_code          TEXT,
    http_status         INTEGER,
    lease_owner         TEXT,
    lease_until         INTEGER,
    -- What we wrote: the scanner leaves a row alone when the listed ETag is our own result.
    result_etag         TEXT,
    result_version_id   TEXT,
    -- Version that was replaced (for rollback on versioned buckets).
    previous_version_id TEXT,
    plaintext_sha256    TEXT,
    created_at          INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at          INTEGER NOT NULL DEFAULT (unixepoch()),
    finished_at         INTEGER,
    UNIQUE (bucket, key)
) STRICT;

-- The claim (see CLAIM_SQL in src/store/mod.rs) takes the lowest ids among the pending rows and
-- the running rows whose lease expired. Two partial indexes keep both lookups proportional to
-- what they return: jobs_pending holds only pending rows in id order (finished rows, eventually
-- millions, leave it), jobs_leases only running rows by expiry, so live leases are never
-- stepped over.
CREATE INDEX jobs_pending ON jobs (id) WHERE state = 'pending';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';

-- Reports filtered by state page through this in id order, and per-state counts (the queue
-- gauges) read it alone, without touching the wide table rows.
CREATE INDEX jobs_state ON jobs (state, id, size);

-- One row per listing (bucket, prefix, shard): an interrupted scan resumes from `start_after`
-- (the last key whose page was durably enqueued) with ListObjectsV2 StartAfter.
CREATE TABLE scans (
    id          INTEGER PRIMARY KEY,
    bucket      TEXT    NOT NULL,
    prefix      TEXT    NOT NULL,
    -- '' when unsharded, otherwise 'index/count' (e.g. '3/16').
    shard       TEXT    NOT NULL,
    start_after TEXT,
    listed      INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    finished_at INTEGER,
    UNIQUE (bucket, prefix, shard)
) STRICT;

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

-- The claim walks the claimable rows in id order. A partial index holds only the 'pending' and
-- 'running' rows, so the claim never steps over the (eventually millions of) finished rows, and
-- it shrinks as the job progresses. The claim statement repeats this exact WHERE term so the
-- planner can use it.
CREATE INDEX jobs_claim ON jobs (id) WHERE state IN ('pending', 'running');

-- Reports filtered by state ("all failed objects") page through this in id order.
CREATE INDEX jobs_state ON jobs (state, id);

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

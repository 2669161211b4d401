-- Noncurrent object versions seen by `s3cse rekey --noncurrent report|delete` (src/rekey/
-- noncurrent.rs, store API in src/store/noncurrent.rs): one row per (bucket, key, version id),
-- classified as `s3cse audit --versions` classifies it, and what became of it.
--
-- A deletion is recorded in two steps: `deleting` (the decision, written before the
-- DeleteObject) then `deleted` with `deleted_at`. A crash between the two leaves `deleting`:
-- the next run deletes again by the same version id, and a version that is already gone is a
-- success, so the row settles as `deleted`.

CREATE TABLE noncurrent_versions (
    id            INTEGER PRIMARY KEY,
    bucket        TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    version_id    TEXT    NOT NULL,
    -- The data object these versions belong to: `key` without a `.instruction` suffix. Its
    -- current version decides whether they may be deleted.
    object_key    TEXT    NOT NULL,
    size          INTEGER NOT NULL CHECK (size >= 0),
    last_modified TEXT,
    -- The census verdict (src/audit/classify.rs): 'plaintext', 'current' (under the target
    -- key) or 'remaining'; for a remaining version `detail` holds its underlying reason
    -- ('legacy-wrap', 'raw-key', 'other-kms-key', ...) and `wrapping_key` what wraps its key.
    class         TEXT    NOT NULL CHECK (class IN ('plaintext', 'current', 'remaining')),
    detail        TEXT,
    wrapping_key  TEXT,
    state         TEXT    NOT NULL DEFAULT 'listed'
                  CHECK (state IN ('listed', 'kept', 'deleting', 'deleted')),
    -- Why a version was kept (Object Lock, current version not verified, an S3 error, ...).
    note          TEXT,
    listed_at     INTEGER NOT NULL DEFAULT (unixepoch()),
    updated_at    INTEGER NOT NULL DEFAULT (unixepoch()),
    deleted_at    INTEGER,
    UNIQUE (bucket, key, version_id)
) STRICT;

-- The delete pass walks the objects with versions still to settle, in key order.
CREATE INDEX noncurrent_open ON noncurrent_versions (bucket, object_key)
    WHERE state <> 'deleted';

-- The catalog of a cas store: the one source of truth for its tables.
--
-- This file is a log of versions, oldest first. Each version starts with a line
-- "-- version: N". A new catalog runs every version; an older one runs the versions it lacks,
-- in one transaction, and its PRAGMA user_version records the last one applied. Released
-- versions are never edited: a change of schema is a new version appended below.
--
-- Times are Unix seconds (REAL). Digests are lowercase hex BLAKE3-256.

-- version: 1

-- One row per file under blobs/. The file is published before its row is inserted and
-- unlinked only after its row is gone (see docs/architecture.md).
CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY CHECK (length(digest) = 64),
    size        INTEGER NOT NULL CHECK (size >= 0),
    created     REAL    NOT NULL,
    -- Coarse: updated when older than the access granularity, in batches (guarantee 6).
    last_access REAL    NOT NULL
) WITHOUT ROWID;

CREATE INDEX blobs_by_last_access ON blobs (last_access);

-- Human names of blobs. A name may outlive its blob when it has a source to fetch it again.
CREATE TABLE names (
    name     TEXT    PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    digest   TEXT    NOT NULL CHECK (length(digest) = 64),
    pinned   INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    -- Where the fixture came from, to fetch it again; NULL for local puts.
    url      TEXT,
    sha256   TEXT    CHECK (sha256 IS NULL OR length(sha256) = 64),
    created  REAL    NOT NULL,
    updated  REAL    NOT NULL
) WITHOUT ROWID;

CREATE INDEX names_by_digest ON names (digest);

-- version: 2

-- Metrics (SPEC "Metrics"): monotonic totals shared by every process, added to in batches.
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Leases: explicit "in use" records that eviction respects (guarantee 3). The holder is a
-- process: host, pid, and the process's start time, so that a reused pid is not taken for it.
CREATE TABLE leases (
    id      INTEGER PRIMARY KEY,
    digest  TEXT    NOT NULL CHECK (length(digest) = 64),
    host    TEXT    NOT NULL,
    pid     INTEGER NOT NULL,
    started REAL    NOT NULL,
    created REAL    NOT NULL,
    expires REAL    NOT NULL
);

CREATE INDEX leases_by_digest ON leases (digest, expires);

-- Storage totals, kept exact by triggers in the same transaction as the rows they count, so
-- that a put can tell whether the store is over its limit without summing every row.
INSERT INTO counters (name, value)
    SELECT 'stored_bytes', coalesce(sum(size), 0) FROM blobs
    UNION ALL SELECT 'stored_blobs', count(*) FROM blobs;

CREATE TRIGGER blobs_inserted AFTER INSERT ON blobs BEGIN
    UPDATE counters SET value = value + NEW.size WHERE name = 'stored_bytes';
    UPDATE counters SET value = value + 1 WHERE name = 'stored_blobs';
END;

CREATE TRIGGER blobs_deleted AFTER DELETE ON blobs BEGIN
    UPDATE counters SET value = value - OLD.size WHERE name = 'stored_bytes';
    UPDATE counters SET value = value - 1 WHERE name = 'stored_blobs';
END;

-- version: 3

-- Downloads (SPEC "fetch"). Upstream checksums seen for content: a sha256 maps to its BLAKE3
-- digest, so a fetch that knows only the sha256 is served from the store without network. A
-- row is a fact about content, written only after a download verified it, and stays true when
-- the blob is evicted (it then tells a re-fetch which BLAKE3 to expect).
CREATE TABLE aliases (
    algorithm TEXT NOT NULL CHECK (algorithm IN ('sha256')),
    value     TEXT NOT NULL CHECK (length(value) = 64),
    digest    TEXT NOT NULL CHECK (length(digest) = 64),
    PRIMARY KEY (algorithm, value)
) WITHOUT ROWID;

-- The last content fetched from each URL: a fetch that expects no digest is served from the
-- store while that blob is there, so concurrent fetches of one URL transfer it once (guarantee 4).
CREATE TABLE sources (
    url     TEXT NOT NULL PRIMARY KEY,
    digest  TEXT NOT NULL CHECK (length(digest) = 64),
    fetched REAL NOT NULL
) WITHOUT ROWID;

-- The size a named fixture's source must have, when known: a re-fetch fails early on a wrong
-- Content-Length instead of downloading it all.
ALTER TABLE names ADD COLUMN expected_size INTEGER CHECK (expected_size IS NULL OR expected_size >= 0);

-- version: 4

-- Verification (issue 6). When each blob's content was last hashed and found right (NULL:
-- never), and its file's stat signature then ("inode:mtime_ns:ctime_ns"): a budgeted verify
-- hashes the least recently verified blobs first, and a quick one rehashes only files whose
-- signature changed since (an edit in place changes mtime or ctime).
ALTER TABLE blobs ADD COLUMN verified REAL;
ALTER TABLE blobs ADD COLUMN signature TEXT;

-- Blobs that verify found missing or damaged. Their rows are dropped (a row never outlives its
-- file) and their names kept, so `cas verify --repair` can fetch them again from a recorded
-- source later, or a put of the same content restores them. A row goes once the blob is back,
-- or once no name refers to the digest any more.
CREATE TABLE damaged (
    digest      TEXT NOT NULL PRIMARY KEY CHECK (length(digest) = 64),
    found       REAL NOT NULL,
    problem     TEXT NOT NULL,
    -- Where the damaged file was moved, relative to the root; NULL when it was missing.
    quarantined TEXT
) WITHOUT ROWID;

-- version: 5

-- Cleanup's victim query (cas/ops/eviction.py) reads digest, size and last access in last-access
-- order. An index on (last_access, size), which holds the digest too as blobs has no rowid,
-- covers it: choosing 200,000 victims among a million blobs then reads no table row
-- (benchmarks/RESULTS.md, gc).
DROP INDEX blobs_by_last_access;
CREATE INDEX blobs_by_access ON blobs (last_access, size);

-- version: 6

-- Refresh. What identified each URL's last content, as its server sent them (ETag,
-- Last-Modified), for the conditional request of a refresh; and a count of the times the URL
-- was downloaded or revalidated, so that a refresh that waited for another process's sees it
-- move and sends no request of its own. Never a request header: those may hold secrets.
ALTER TABLE sources ADD COLUMN etag TEXT;
ALTER TABLE sources ADD COLUMN last_modified TEXT;
ALTER TABLE sources ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;

-- A name fetched from its url without an expected digest follows what that URL gives: when a
-- download or refresh of the URL brings other content, the name moves to it.
ALTER TABLE names ADD COLUMN floating INTEGER NOT NULL DEFAULT 0 CHECK (floating IN (0, 1));
CREATE INDEX names_by_url ON names (url) WHERE floating = 1;

-- version: 7

-- Upstream checksums besides SHA-256: a fetch may expect an MD5 (32 hex digits) or a SHA-1
-- (40) too, verified while the content streams in and kept here like a SHA-256. SQLite cannot
-- alter a CHECK, so the table is made anew, filled from the old one, and renamed into place.
CREATE TABLE aliases_rebuilt (
    algorithm TEXT NOT NULL CHECK (algorithm IN ('sha256', 'sha1', 'md5')),
    value     TEXT NOT NULL CHECK (length(value) = CASE algorithm
                                   WHEN 'sha256' THEN 64 WHEN 'sha1' THEN 40 ELSE 32 END),
    digest    TEXT NOT NULL CHECK (length(digest) = 64),
    PRIMARY KEY (algorithm, value)
) WITHOUT ROWID;

INSERT INTO aliases_rebuilt (algorithm, value, digest) SELECT algorithm, value, digest FROM aliases;
DROP TABLE aliases;
ALTER TABLE aliases_rebuilt RENAME TO aliases;

-- version: 8

-- Trees: a folder stored as one fixture. Its record (a canonical JSON list of relative paths,
-- executable bits, sizes and digests; cas/storage/trees.py) is itself a blob, whose digest is
-- the tree's ref; these rows repeat the record for queries. A tree's members are protected from
-- cleanup while its record blob is stored (cas/ops/eviction.py walks tree_entries_by_digest).
CREATE TABLE trees (
    digest TEXT NOT NULL PRIMARY KEY CHECK (length(digest) = 64),
    files  INTEGER NOT NULL CHECK (files >= 0),
    size   INTEGER NOT NULL CHECK (size >= 0)
) WITHOUT ROWID;

CREATE TABLE tree_entries (
    tree       TEXT NOT NULL,
    path       TEXT NOT NULL,
    digest     TEXT NOT NULL CHECK (length(digest) = 64),
    size       INTEGER NOT NULL CHECK (size >= 0),
    executable INTEGER NOT NULL CHECK (executable IN (0, 1)),
    PRIMARY KEY (tree, path)
) WITHOUT ROWID;

CREATE INDEX tree_entries_by_digest ON tree_entries (digest);

-- A tree's rows go with its record blob's row (evicted, removed, or dropped as damaged), in the
-- same transaction.
CREATE TRIGGER tree_record_deleted AFTER DELETE ON blobs BEGIN
    DELETE FROM tree_entries WHERE tree = OLD.digest;
    DELETE FROM trees WHERE digest = OLD.digest;
END;

-- version: 9

-- Archives (SPEC "Archives"). Which content unpacking an archive gave, by the archive's digest
-- and the kind it was unpacked as (never "auto": the kind it resolved to). Like aliases, a row
-- is a fact about content, written once the result is stored, and stays when either blob is
-- evicted: a fetch of the archive with the same unpack is served by the result while that is
-- stored, and a refetch of an evicted result knows which archive to expect.
CREATE TABLE unpacked (
    archive      TEXT    NOT NULL CHECK (length(archive) = 64),
    kind         TEXT    NOT NULL,
    digest       TEXT    NOT NULL CHECK (length(digest) = 64),
    archive_size INTEGER NOT NULL CHECK (archive_size >= 0),
    created      REAL    NOT NULL,
    PRIMARY KEY (archive, kind)
) WITHOUT ROWID;

CREATE INDEX unpacked_by_digest ON unpacked (digest, kind);

-- A named fixture fetched with unpack remembers the kind: its url is the archive's, its digest
-- the unpacked result's, and auto_download fetches and unpacks it again.
ALTER TABLE names ADD COLUMN unpack TEXT;

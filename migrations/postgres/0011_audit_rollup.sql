-- Issue 13 point 5: audit summaries in at most 200 ms at 5M rows. A continuous
-- aggregate of each tenant's token rows (kind token_issued / token_refused),
-- kept by a background pass (`Store::rollup_pass`, every 30 s), never by the
-- issuance write path. A summary adds the counts of the buckets inside its
-- window to the raw rows the pass has not counted yet and the partial days at
-- the window's edges (docs/audit.md "Summaries"). Correctness never depends on
-- the pass having run; only speed does.

-- How far each tenant's rollup has counted: every row of the tenant with
-- seq <= through_seq is in audit_rollup, none above it. Moved only together
-- with audit_rollup rows, in one transaction (a compare-and-set on this row).
CREATE TABLE audit_rollup_state (
    tenant        TEXT NOT NULL PRIMARY KEY,
    through_seq   BIGINT NOT NULL
);

-- Issued and refused counts per group key and bucket of UTC days. Level l
-- buckets cover 4^l days (0..6: a day up to about 11 years), bucket =
-- floor(day / 4^l), day = floor(at_ms / 86400000); every counted row adds to
-- one bucket per level, so any range of whole days is a handful of rows per key.
CREATE TABLE audit_rollup (
    tenant        TEXT NOT NULL,
    dim           TEXT NOT NULL,             -- role | user | session | rule
    level         SMALLINT NOT NULL,         -- 0..6
    bucket        BIGINT NOT NULL,           -- floor(day / 4^level)
    has_key       SMALLINT NOT NULL,         -- 0: the group key is NULL (key is '')
    key           TEXT NOT NULL,             -- NULLs are distinct in a unique key, so NULL is (0, '')
    issued        BIGINT NOT NULL,
    refused       BIGINT NOT NULL,
    PRIMARY KEY (tenant, dim, level, bucket, has_key, key)
);

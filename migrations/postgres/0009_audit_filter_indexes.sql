-- Issue 13 point 5: every /v1/audit filter has an index that yields its rows
-- newest first (the query is `... AND col = $v ORDER BY seq DESC LIMIT n`), so
-- a rare or absent value is answered from the index instead of by scanning the
-- tenant's whole history. All these columns have few distinct values, so each
-- insert lands at the end of its value's run (hot pages): cheap on the write
-- path (measured in docs/performance.md). The random token fingerprint gets no
-- index: tokens are looked up by token_id, then checked against token_sha256.
CREATE INDEX audit_by_kind ON audit_events (tenant, kind, seq);
CREATE INDEX audit_by_outcome ON audit_events (tenant, outcome, seq);
CREATE INDEX audit_by_code ON audit_events (tenant, code, seq);
CREATE INDEX audit_by_rule ON audit_events (tenant, rule, seq);
CREATE INDEX audit_by_policy_version ON audit_events (tenant, policy_version, seq);
CREATE INDEX audit_by_key ON audit_events (tenant, key_id, seq);

-- Issue 13 point 5: audit pages are ordered newest first by recorded time,
-- then chain position (`ORDER BY at_ms DESC, seq DESC`, keyset cursor on
-- `(at_ms, seq)`). Every filter's index ends in `(at_ms, seq)`, so a filter
-- alone, a time window alone, or a filter within a time window is one index
-- range read in page order that stops after `limit` rows, whatever the size
-- of the history (the old `(tenant, col, seq)` indexes made a wide `since` or
-- `until` either scan the history in chain order or sort every match).
-- Same number of indexes as before: the write path adds nothing.
DROP INDEX audit_by_time;
DROP INDEX audit_by_session;
DROP INDEX audit_by_user;
DROP INDEX audit_by_role;
DROP INDEX audit_by_kind;
DROP INDEX audit_by_outcome;
DROP INDEX audit_by_code;
DROP INDEX audit_by_rule;
DROP INDEX audit_by_policy_version;
DROP INDEX audit_by_key;
DROP INDEX audit_by_token_id;
CREATE INDEX audit_by_time ON audit_events (tenant, at_ms, seq);
CREATE INDEX audit_by_session ON audit_events (tenant, session_id, at_ms, seq);
CREATE INDEX audit_by_user ON audit_events (tenant, user_id, at_ms, seq);
CREATE INDEX audit_by_role ON audit_events (tenant, granted_role, at_ms, seq);
CREATE INDEX audit_by_kind ON audit_events (tenant, kind, at_ms, seq);
CREATE INDEX audit_by_outcome ON audit_events (tenant, outcome, at_ms, seq);
CREATE INDEX audit_by_code ON audit_events (tenant, code, at_ms, seq);
CREATE INDEX audit_by_rule ON audit_events (tenant, rule, at_ms, seq);
CREATE INDEX audit_by_policy_version ON audit_events (tenant, policy_version, at_ms, seq);
CREATE INDEX audit_by_key ON audit_events (tenant, key_id, at_ms, seq);
CREATE INDEX audit_by_token_id ON audit_events (tenant, token_id, at_ms, seq);

-- Revoking a subject: every token of it issued before `revoked_before` is refused, and its
-- open sockets are closed, on every gateway process (each polls this table).
CREATE TABLE token_revocations (
    sub            uuid PRIMARY KEY,
    revoked_before timestamptz NOT NULL,
    revoked_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX token_revocations_at_idx ON token_revocations (revoked_at);

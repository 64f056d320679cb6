-- Clinician observation: who is on a patient's care team, and an append-only trail of
-- every access to a patient's data by someone other than the patient.

-- A grant lets a clinician observe a patient until it is revoked (the row goes) or it
-- expires. granted_by is the admin's subject (the nil UUID for the command line).
CREATE TABLE care_team (
    clinician_id uuid NOT NULL,
    patient_id   uuid NOT NULL,
    granted_by   uuid NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    PRIMARY KEY (clinician_id, patient_id)
);
CREATE INDEX care_team_patient_idx ON care_team (patient_id);

-- Who did what to which patient's data, when, and how it ended. Never updated; deleted
-- only by the retention job (painar_prune_audit), and only rows older than it is told.
CREATE TABLE access_audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id   uuid,
    actor_role text NOT NULL CHECK (actor_role IN ('patient', 'clinician', 'admin', 'system')),
    patient_id uuid,
    action     text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('allowed', 'denied', 'ended')),
    reason     text,
    session_id uuid
);
CREATE INDEX access_audit_patient_idx ON access_audit (patient_id, at);

CREATE FUNCTION painar_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('painar.audit_prune_before', true) IS NOT NULL
       AND current_setting('painar.audit_prune_before', true) <> ''
       AND OLD.at < current_setting('painar.audit_prune_before', true)::timestamptz THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'access_audit is append-only'
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER access_audit_append_only
    BEFORE UPDATE OR DELETE ON access_audit
    FOR EACH ROW EXECUTE FUNCTION painar_audit_guard();

-- The retention job's one way to delete: rows older than `before`, no others.
CREATE FUNCTION painar_prune_audit(before timestamptz) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
BEGIN
    PERFORM set_config('painar.audit_prune_before', before::text, true);
    DELETE FROM access_audit WHERE at < before;
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM set_config('painar.audit_prune_before', '', true);
    RETURN gone;
END $$;

-- TRUNCATE skips row triggers: a statement trigger refuses it (superusers included).
CREATE TRIGGER access_audit_no_truncate
    BEFORE TRUNCATE ON access_audit
    FOR EACH STATEMENT EXECUTE FUNCTION painar_audit_guard();

-- Where the gateway's role is not the table's owner or a superuser, it gets no more than
-- it uses (a role that owns the table can grant itself more back; the triggers hold).
REVOKE TRUNCATE, UPDATE ON access_audit FROM PUBLIC, CURRENT_USER;

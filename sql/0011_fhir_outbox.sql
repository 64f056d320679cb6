-- FHIR export: every pain report written (inserted, edited or deleted) is queued, in the
-- same transaction, for the configured FHIR server; a worker sends what is due as one
-- transaction Bundle (PUT or DELETE by the report's id, so a resend changes nothing) and
-- takes the rows off only if the report was not written again meanwhile (revision).
-- Without FHIR_WEBHOOK_URL nothing is sent and the queue keeps one row per report: set
-- it later and the backlog goes first.

CREATE TABLE fhir_outbox (
    report_id   uuid PRIMARY KEY REFERENCES pain_reports (id) ON DELETE CASCADE,
    patient_id  uuid NOT NULL,
    revision    bigint NOT NULL DEFAULT 1,
    -- Due from then: a moment after a write (so a burst goes as one Bundle), later a
    -- worker's lease or its backoff after a failure.
    not_before  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,  -- why the last attempt failed (a status or an error type, no data)
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fhir_outbox_due_idx ON fhir_outbox (not_before);

CREATE FUNCTION painar_queue_fhir() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fhir_outbox AS q (report_id, patient_id, not_before)
    VALUES (NEW.id, NEW.patient_id, now() + interval '1 second')
    ON CONFLICT (report_id) DO UPDATE
        SET revision = q.revision + 1, not_before = EXCLUDED.not_before, attempts = 0,
            last_error = NULL, enqueued_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER pain_reports_queue_fhir
    AFTER INSERT OR UPDATE ON pain_reports
    FOR EACH ROW EXECUTE FUNCTION painar_queue_fhir();

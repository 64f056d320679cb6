-- FHIR export of summaries: the outbox (sql/0011) now holds any resource the gateway
-- sends, named by type and id: a pain report's Observation, as before, and a thread's
-- summary as a DocumentReference, queued whenever the summary changes: written, dropped
-- (a message of the thread deleted) or erased with its thread. A summary that is gone is
-- deleted on the server.

ALTER TABLE fhir_outbox DROP CONSTRAINT fhir_outbox_report_id_fkey;
ALTER TABLE fhir_outbox DROP CONSTRAINT fhir_outbox_pkey;
ALTER TABLE fhir_outbox RENAME COLUMN report_id TO resource_id;
ALTER TABLE fhir_outbox ADD COLUMN resource text NOT NULL DEFAULT 'Observation'
    CHECK (resource IN ('Observation', 'DocumentReference'));
ALTER TABLE fhir_outbox ALTER COLUMN resource DROP DEFAULT;
ALTER TABLE fhir_outbox ADD PRIMARY KEY (resource, resource_id);

CREATE OR REPLACE FUNCTION painar_queue_fhir() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text := CASE TG_TABLE_NAME WHEN 'threads' THEN 'DocumentReference' ELSE 'Observation' END;
BEGIN
    INSERT INTO fhir_outbox AS q (resource, resource_id, patient_id, not_before)
    VALUES (kind, NEW.id, NEW.patient_id, now() + interval '1 second')
    ON CONFLICT (resource, resource_id) DO UPDATE
        SET revision = q.revision + 1, not_before = EXCLUDED.not_before, attempts = 0,
            last_error = NULL, enqueued_at = now();
    RETURN NULL;
END $$;

-- Any update (a delete's trigger blanks the summary without naming the column).
CREATE TRIGGER threads_queue_fhir
    AFTER UPDATE ON threads
    FOR EACH ROW WHEN (OLD.summary IS DISTINCT FROM NEW.summary)
    EXECUTE FUNCTION painar_queue_fhir();

-- Pain reports: the numeric rating scale (0-10) and where it hurts, a synced entity of
-- its own beside threads and messages (entity 'pain_report' in mutations and changes).
-- A report may name one of the patient's threads; deleting that thread leaves the report
-- (it is the patient's record, not the conversation's). A delete erases the report's
-- content and its earlier changes, as for messages (sql/0008).

ALTER TABLE changes DROP CONSTRAINT changes_entity_check;
ALTER TABLE changes ADD CONSTRAINT changes_entity_check
    CHECK (entity IN ('thread', 'message', 'pain_report'));

CREATE TABLE pain_reports (
    id          uuid PRIMARY KEY,
    patient_id  uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    thread_id   uuid REFERENCES threads (id) ON DELETE SET NULL,
    -- Null only once erased: devices always give one (0-10).
    intensity   smallint CHECK (intensity BETWEEN 0 AND 10),
    svg_path    text,
    region      text,
    qualities   text[] NOT NULL DEFAULT '{}',
    note        text,
    onset_at    timestamptz,
    recorded_at timestamptz,
    device_id   text,
    deleted     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The prompt's "recent reports" and the FHIR export read a patient's reports by time.
CREATE INDEX pain_reports_patient_idx ON pain_reports (patient_id, recorded_at DESC)
    WHERE NOT deleted;

CREATE FUNCTION painar_erase_pain_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.intensity := NULL;
    NEW.svg_path := NULL;
    NEW.region := NULL;
    NEW.qualities := '{}';
    NEW.note := NULL;
    NEW.onset_at := NULL;
    NEW.recorded_at := NULL;
    NEW.thread_id := NULL;
    PERFORM painar_erase_changes(NEW.patient_id, 'pain_report', NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER pain_reports_erase
    BEFORE UPDATE OF deleted ON pain_reports
    FOR EACH ROW WHEN (NEW.deleted AND NOT OLD.deleted)
    EXECUTE FUNCTION painar_erase_pain_report();

-- The change log's write (sql/0003) again, now applying pain reports too; threads and
-- messages are unchanged.
CREATE OR REPLACE FUNCTION painar_apply_mutations(
    p_patient uuid, p_device text, p_lock bigint, p_mutations jsonb
) RETURNS TABLE (
    outcome text, version bigint, code text, message text, data jsonb, at timestamptz,
    latest bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v bigint;
    m jsonb;
    k text;
    d jsonb;
    e_id uuid;
    t_id uuid;
    owner uuid;
    gone boolean;
    ex record;
BEGIN
    IF p_lock IS NOT NULL THEN
        -- Session-level: outlives this statement's commit until the caller releases it.
        PERFORM pg_advisory_lock(p_lock);
    END IF;
    INSERT INTO patients AS p (id) VALUES (p_patient)
    ON CONFLICT (id) DO UPDATE SET id = p.id
    RETURNING p.sync_version INTO v;
    IF p_device IS NOT NULL THEN
        INSERT INTO devices AS dv (patient_id, device_id) VALUES (p_patient, p_device)
        ON CONFLICT (patient_id, device_id) DO UPDATE SET last_seen = now();
    END IF;

    FOR m IN SELECT value FROM jsonb_array_elements(p_mutations) LOOP
        k := CASE WHEN p_device IS NULL THEN NULL ELSE m->>'mutation_id' END;
        e_id := (m->>'id')::uuid;
        outcome := NULL; version := NULL; code := NULL; message := NULL;
        data := NULL; at := NULL; latest := NULL; d := NULL;

        IF k IS NOT NULL THEN
            SELECT c.version INTO version FROM changes c
            WHERE c.patient_id = p_patient AND c.device_id = p_device AND c.mutation_id = k;
            IF FOUND THEN
                outcome := 'duplicate';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        IF m->>'entity' = 'thread' AND m->>'op' = 'upsert' THEN
            INSERT INTO threads AS t (id, patient_id, title)
            VALUES (e_id, p_patient, coalesce(m->'data'->>'title', ''))
            ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, updated_at = now()
                WHERE t.patient_id = EXCLUDED.patient_id AND NOT t.deleted
            RETURNING jsonb_build_object(
                'title', t.title, 'created_at', t.created_at, 'updated_at', t.updated_at)
            INTO d;
            IF NOT FOUND THEN
                SELECT th.patient_id, th.deleted INTO owner, gone FROM threads th WHERE th.id = e_id;
                IF owner <> p_patient THEN
                    code := 'forbidden'; message := 'thread_id: the thread belongs to another patient';
                ELSE
                    code := 'conflict'; message := 'thread_id: the thread was deleted';
                END IF;
            END IF;

        ELSIF m->>'entity' = 'thread' AND m->>'op' = 'delete' THEN
            -- Deleting a thread deletes its messages and their memories; no separate changes
            -- are logged for them, replicas apply the thread's delete to its messages.
            UPDATE threads th SET deleted = true, updated_at = now()
            WHERE th.id = e_id AND th.patient_id = p_patient;
            IF FOUND THEN
                DELETE FROM memories mem USING messages ms
                WHERE mem.message_id = ms.id AND ms.thread_id = e_id AND NOT ms.deleted;
                UPDATE messages ms SET deleted = true, updated_at = now()
                WHERE ms.thread_id = e_id AND NOT ms.deleted;
            ELSIF EXISTS (SELECT 1 FROM threads th WHERE th.id = e_id) THEN
                code := 'forbidden'; message := 'id: the thread belongs to another patient';
            ELSE
                code := 'not_found'; message := 'id: no such thread';
            END IF;

        ELSIF m->>'entity' = 'message' AND m->>'op' = 'upsert' THEN
            -- Inserted only into a live thread of this patient; an existing message may
            -- change its content and body-map path, never its owner, thread or role.
            t_id := (m->'data'->>'thread_id')::uuid;
            INSERT INTO messages AS ms
                (id, patient_id, thread_id, role, content, svg_path, source, device_id,
                 created_at, finish_reason, reply_to)
            SELECT e_id, p_patient, t_id, m->'data'->>'role', m->'data'->>'content',
                   m->'data'->>'svg_path', m->'data'->>'source', p_device,
                   coalesce((m->'data'->>'created_at')::timestamptz, now()),
                   m->'data'->>'finish_reason', (m->'data'->>'reply_to')::uuid
            WHERE EXISTS (
                SELECT 1 FROM threads th
                WHERE th.id = t_id AND th.patient_id = p_patient AND NOT th.deleted)
            ON CONFLICT (id) DO UPDATE
                SET content = EXCLUDED.content, svg_path = EXCLUDED.svg_path, updated_at = now()
                WHERE ms.patient_id = EXCLUDED.patient_id AND ms.thread_id = EXCLUDED.thread_id
                  AND ms.role = EXCLUDED.role AND NOT ms.deleted
            RETURNING jsonb_build_object(
                'thread_id', ms.thread_id, 'role', ms.role, 'content', ms.content,
                'svg_path', ms.svg_path, 'source', ms.source, 'device_id', ms.device_id,
                'created_at', ms.created_at, 'updated_at', ms.updated_at)
                || jsonb_strip_nulls(jsonb_build_object(
                    'finish_reason', ms.finish_reason, 'reply_to', ms.reply_to))
            INTO d;
            IF NOT FOUND THEN
                SELECT ms.patient_id, ms.thread_id, ms.role, ms.deleted INTO ex
                FROM messages ms WHERE ms.id = e_id;
                IF FOUND AND ex.patient_id <> p_patient THEN
                    code := 'forbidden'; message := 'id: the message belongs to another patient';
                ELSIF FOUND AND ex.deleted THEN
                    code := 'conflict'; message := 'id: the message was deleted';
                ELSIF FOUND AND ex.thread_id <> t_id THEN
                    code := 'conflict'; message := 'thread_id: the message belongs to another thread';
                ELSIF FOUND AND ex.role <> m->'data'->>'role' THEN
                    code := 'conflict'; message := 'role: a message''s role cannot change';
                ELSE
                    SELECT th.patient_id, th.deleted INTO owner, gone
                    FROM threads th WHERE th.id = t_id;
                    IF NOT FOUND THEN
                        code := 'not_found'; message := 'thread_id: no such thread';
                    ELSIF owner <> p_patient THEN
                        code := 'forbidden';
                        message := 'thread_id: the thread belongs to another patient';
                    ELSE
                        code := 'conflict'; message := 'thread_id: the thread was deleted';
                    END IF;
                END IF;
            END IF;

        ELSIF m->>'entity' = 'message' AND m->>'op' = 'delete' THEN
            UPDATE messages ms SET deleted = true, updated_at = now()
            WHERE ms.id = e_id AND ms.patient_id = p_patient;
            IF FOUND THEN
                DELETE FROM memories mem WHERE mem.message_id = e_id;
            ELSIF EXISTS (SELECT 1 FROM messages ms WHERE ms.id = e_id) THEN
                code := 'forbidden'; message := 'id: the message belongs to another patient';
            ELSE
                code := 'not_found'; message := 'id: no such message';
            END IF;

        ELSIF m->>'entity' = 'pain_report' AND m->>'op' = 'upsert' THEN
            -- Optionally tied to a live thread of this patient; an upsert replaces every
            -- field but the time it was recorded, which stays unless given again.
            t_id := (m->'data'->>'thread_id')::uuid;
            IF t_id IS NOT NULL THEN
                SELECT th.patient_id, th.deleted INTO owner, gone FROM threads th WHERE th.id = t_id;
                IF NOT FOUND THEN
                    code := 'not_found'; message := 'thread_id: no such thread';
                ELSIF owner <> p_patient THEN
                    code := 'forbidden'; message := 'thread_id: the thread belongs to another patient';
                ELSIF gone THEN
                    code := 'conflict'; message := 'thread_id: the thread was deleted';
                END IF;
            END IF;
            IF code IS NULL THEN
                INSERT INTO pain_reports AS pr
                    (id, patient_id, thread_id, intensity, svg_path, region, qualities, note,
                     onset_at, recorded_at, device_id)
                VALUES (e_id, p_patient, t_id, (m->'data'->>'intensity')::smallint,
                        m->'data'->>'svg_path', m->'data'->>'region',
                        ARRAY(SELECT jsonb_array_elements_text(
                            coalesce(m->'data'->'qualities', '[]'::jsonb))),
                        m->'data'->>'note', (m->'data'->>'onset_at')::timestamptz,
                        coalesce((m->'data'->>'recorded_at')::timestamptz, now()), p_device)
                ON CONFLICT (id) DO UPDATE
                    SET thread_id = EXCLUDED.thread_id, intensity = EXCLUDED.intensity,
                        svg_path = EXCLUDED.svg_path, region = EXCLUDED.region,
                        qualities = EXCLUDED.qualities, note = EXCLUDED.note,
                        onset_at = EXCLUDED.onset_at,
                        recorded_at = coalesce((m->'data'->>'recorded_at')::timestamptz,
                                               pr.recorded_at),
                        updated_at = now()
                    WHERE pr.patient_id = EXCLUDED.patient_id AND NOT pr.deleted
                RETURNING jsonb_strip_nulls(jsonb_build_object(
                    'thread_id', pr.thread_id, 'intensity', pr.intensity,
                    'svg_path', pr.svg_path, 'region', pr.region, 'note', pr.note,
                    'onset_at', pr.onset_at, 'device_id', pr.device_id))
                    || jsonb_build_object(
                    'qualities', to_jsonb(pr.qualities), 'recorded_at', pr.recorded_at,
                    'created_at', pr.created_at, 'updated_at', pr.updated_at)
                INTO d;
                IF NOT FOUND THEN
                    SELECT pr.patient_id INTO owner FROM pain_reports pr WHERE pr.id = e_id;
                    IF owner <> p_patient THEN
                        code := 'forbidden'; message := 'id: the pain report belongs to another patient';
                    ELSE
                        code := 'conflict'; message := 'id: the pain report was deleted';
                    END IF;
                END IF;
            END IF;

        ELSIF m->>'entity' = 'pain_report' AND m->>'op' = 'delete' THEN
            UPDATE pain_reports pr SET deleted = true, updated_at = now()
            WHERE pr.id = e_id AND pr.patient_id = p_patient;
            IF NOT FOUND THEN
                IF EXISTS (SELECT 1 FROM pain_reports pr WHERE pr.id = e_id) THEN
                    code := 'forbidden'; message := 'id: the pain report belongs to another patient';
                ELSE
                    code := 'not_found'; message := 'id: no such pain report';
                END IF;
            END IF;

        ELSE
            code := 'invalid'; message := 'entity, op: not a known kind of mutation';
        END IF;

        IF code IS NOT NULL THEN
            outcome := 'rejected';
            RETURN NEXT;
            CONTINUE;
        END IF;
        v := v + 1;
        INSERT INTO changes AS c
            (patient_id, version, entity, op, entity_id, data, device_id, mutation_id)
        VALUES (p_patient, v, m->>'entity', m->>'op', e_id, d, p_device, k)
        RETURNING c.data, c.at INTO data, at;
        outcome := 'applied';
        version := v;
        RETURN NEXT;
    END LOOP;

    UPDATE patients p SET sync_version = v WHERE p.id = p_patient AND p.sync_version <> v;
    outcome := 'end'; version := NULL; code := NULL; message := NULL; data := NULL; at := NULL;
    latest := v;
    RETURN NEXT;
END
$$;

-- Thread summaries: a nightly job (and `painar-gateway summarize`) writes each changed
-- thread's summary through the change log (devices get it like any change: thread data
-- gains `summary` and `summarized_at`) and keeps its embedding as a memory of kind
-- summary (`summary_memories`), which retrieval offers for earlier conversations.
-- summarized_version is the patient's change-log version the summary was made from:
-- the write only moves it forward. A deleted message may be quoted in its thread's
-- summary, so deleting one drops that summary everywhere it is kept (the thread row, its
-- memory, and the thread's earlier changes), as deletes erase (sql/0008).

ALTER TABLE threads
    ADD COLUMN summary text,
    ADD COLUMN summarized_at timestamptz,
    ADD COLUMN summarized_version bigint;

CREATE TABLE summary_memories (
    thread_id  uuid PRIMARY KEY REFERENCES threads (id) ON DELETE CASCADE,
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    content    text NOT NULL,
    embedding  vector({{vector_dim}}) STORAGE PLAIN NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX summary_memories_patient_idx ON summary_memories (patient_id);

-- One row per scheduled day: which run happened (a second scheduler that day sees it).
CREATE TABLE summary_runs (
    run_date    date PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    summarized  integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0
);

CREATE FUNCTION painar_drop_summary(p_patient uuid, p_thread uuid) RETURNS void
LANGUAGE sql AS $$
    UPDATE threads SET summary = NULL, summarized_at = NULL, summarized_version = NULL
    WHERE id = p_thread AND summary IS NOT NULL;
    DELETE FROM summary_memories WHERE thread_id = p_thread;
    UPDATE changes SET data = data - 'summary' - 'summarized_at'
    WHERE patient_id = p_patient AND entity = 'thread' AND entity_id = p_thread
      AND data ? 'summary';
$$;

CREATE OR REPLACE FUNCTION painar_erase_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.content := '';
    NEW.svg_path := NULL;
    PERFORM painar_erase_changes(NEW.patient_id, 'message', NEW.id);
    PERFORM painar_drop_summary(NEW.patient_id, NEW.thread_id);
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION painar_erase_thread() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.title := '';
    NEW.summary := NULL;
    NEW.summarized_at := NULL;
    DELETE FROM summary_memories WHERE thread_id = NEW.id;
    PERFORM painar_erase_changes(NEW.patient_id, 'thread', NEW.id);
    RETURN NEW;
END $$;

-- The change log's write (sql/0010) again: a thread's data carries its summary, and the
-- summary job writes it; everything else is unchanged.
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

        IF m->>'entity' = 'thread' AND m->>'op' = 'upsert' AND m->'data' ? 'summary' THEN
            -- The summary job's write (never a device's: the protocol refuses the field):
            -- keeps the title, never creates a thread, and only moves forward, so a run
            -- repeated or resumed writes each thread's summary of a version once.
            UPDATE threads t
            SET summary = m->'data'->>'summary', summarized_at = now(),
                summarized_version = (m->'data'->>'summarized_version')::bigint,
                updated_at = now()
            WHERE t.id = e_id AND t.patient_id = p_patient AND NOT t.deleted
              AND coalesce(t.summarized_version, -1)
                  < (m->'data'->>'summarized_version')::bigint
            RETURNING jsonb_strip_nulls(jsonb_build_object(
                'summary', t.summary, 'summarized_at', t.summarized_at))
                || jsonb_build_object(
                'title', t.title, 'created_at', t.created_at, 'updated_at', t.updated_at)
            INTO d;
            IF NOT FOUND THEN
                code := 'conflict';
                message := 'id: the thread is gone or already summarized at this version';
            END IF;

        ELSIF m->>'entity' = 'thread' AND m->>'op' = 'upsert' THEN
            INSERT INTO threads AS t (id, patient_id, title)
            VALUES (e_id, p_patient, coalesce(m->'data'->>'title', ''))
            ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, updated_at = now()
                WHERE t.patient_id = EXCLUDED.patient_id AND NOT t.deleted
            RETURNING jsonb_strip_nulls(jsonb_build_object(
                'summary', t.summary, 'summarized_at', t.summarized_at))
                || jsonb_build_object(
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

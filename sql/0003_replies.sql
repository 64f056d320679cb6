-- Replies: an assistant message records why it ended (finish_reason) and which user
-- message it answers (reply_to); a lease per thread lets one reply stream at a time
-- across every gateway process.

ALTER TABLE messages
    ADD COLUMN finish_reason text
        CHECK (finish_reason IN ('stop', 'length', 'cancelled', 'error')),
    ADD COLUMN reply_to uuid;
CREATE INDEX messages_reply_to_idx ON messages (reply_to) WHERE reply_to IS NOT NULL;

-- A lease, not a lock held for the reply's length: a process that dies mid-reply frees
-- the thread when the lease expires. The key is per patient so no patient can hold
-- another's thread.
CREATE TABLE reply_leases (
    patient_id  uuid NOT NULL,
    thread_id   uuid NOT NULL,
    response_id uuid NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (patient_id, thread_id)
);

-- The change log's write (sql/0002) again, now storing and returning finish_reason and
-- reply_to for messages; everything else is unchanged.
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

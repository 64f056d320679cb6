-- Erasure: a delete removes the content, not only flags it. When a thread or message
-- becomes deleted, its row keeps its id and the deleted flag (a later write of the same
-- id is refused as deleted) but loses its text, and every earlier change-log row of it
-- keeps only its version, entity, id and idempotency key: it reads as a delete with no
-- data. Versions stay gapless, so a device pulling from any version converges, and a
-- pull from 0 returns no deleted text. (Memories and queued embeddings of a deleted
-- message go in sql/0006's trigger.)

-- Finding an entity's changes (a thread's delete erases each of its messages' changes).
CREATE INDEX changes_entity_idx ON changes (patient_id, entity_id);

CREATE FUNCTION painar_erase_changes(p_patient uuid, p_entity text, p_id uuid)
RETURNS void LANGUAGE sql AS $$
    UPDATE changes SET op = 'delete', data = NULL
    WHERE patient_id = p_patient AND entity = p_entity AND entity_id = p_id
      AND (op <> 'delete' OR data IS NOT NULL);
$$;

CREATE FUNCTION painar_erase_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.content := '';
    NEW.svg_path := NULL;
    PERFORM painar_erase_changes(NEW.patient_id, 'message', NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER messages_erase
    BEFORE UPDATE OF deleted ON messages
    FOR EACH ROW WHEN (NEW.deleted AND NOT OLD.deleted)
    EXECUTE FUNCTION painar_erase_message();

CREATE FUNCTION painar_erase_thread() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.title := '';
    PERFORM painar_erase_changes(NEW.patient_id, 'thread', NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER threads_erase
    BEFORE UPDATE OF deleted ON threads
    FOR EACH ROW WHEN (NEW.deleted AND NOT OLD.deleted)
    EXECUTE FUNCTION painar_erase_thread();

-- What was deleted before this migration is erased now.
UPDATE messages SET content = '', svg_path = NULL
WHERE deleted AND (content <> '' OR svg_path IS NOT NULL);
UPDATE threads SET title = '' WHERE deleted AND title <> '';
UPDATE changes c SET op = 'delete', data = NULL
FROM messages ms
WHERE c.entity = 'message' AND c.entity_id = ms.id AND c.patient_id = ms.patient_id
  AND ms.deleted AND c.data IS NOT NULL;
UPDATE changes c SET op = 'delete', data = NULL
FROM threads th
WHERE c.entity = 'thread' AND c.entity_id = th.id AND c.patient_id = th.patient_id
  AND th.deleted AND c.data IS NOT NULL;

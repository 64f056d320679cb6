-- Every message becomes a memory, whichever path wrote it: writing a message queues its
-- embedding (in the same transaction), a worker in each gateway process embeds what is
-- due in batches. An edit queues the new text and forgets the old vector at once; a
-- delete forgets both (the change log already deletes a deleted message's memory).

-- Which text a vector is of (SHA-256 of the content); null for memories written before.
ALTER TABLE memories ADD COLUMN content_sha bytea;

CREATE TABLE embedding_queue (
    message_id  uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    patient_id  uuid NOT NULL,
    content_sha bytea NOT NULL,  -- the version to embed
    -- Due from then: a short delay after a write (chat stores its own embeddings meanwhile
    -- and takes the row off), later a worker's lease or its backoff after a failure.
    not_before  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX embedding_queue_due_idx ON embedding_queue (not_before);

CREATE FUNCTION painar_queue_embedding() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted THEN
        DELETE FROM embedding_queue WHERE message_id = NEW.id;
        DELETE FROM memories WHERE message_id = NEW.id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.content IS NOT DISTINCT FROM OLD.content THEN
            RETURN NULL;
        END IF;
        DELETE FROM memories WHERE message_id = NEW.id;  -- what was taken back is forgotten
    END IF;
    IF NEW.content = '' THEN
        DELETE FROM embedding_queue WHERE message_id = NEW.id;
        RETURN NULL;
    END IF;
    INSERT INTO embedding_queue AS q (message_id, patient_id, content_sha, not_before)
    VALUES (NEW.id, NEW.patient_id, sha256(convert_to(NEW.content, 'UTF8')),
            now() + interval '2 seconds')
    ON CONFLICT (message_id) DO UPDATE
        SET content_sha = EXCLUDED.content_sha, not_before = EXCLUDED.not_before,
            attempts = 0, enqueued_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER messages_queue_embedding
    AFTER INSERT OR UPDATE OF content, deleted ON messages
    FOR EACH ROW EXECUTE FUNCTION painar_queue_embedding();

-- Messages written before this migration: queued once, oldest first.
INSERT INTO embedding_queue (message_id, patient_id, content_sha, not_before)
SELECT ms.id, ms.patient_id, sha256(convert_to(ms.content, 'UTF8')), ms.created_at
FROM messages ms
WHERE NOT ms.deleted AND ms.content <> ''
  AND NOT EXISTS (SELECT 1 FROM memories m WHERE m.message_id = ms.id);

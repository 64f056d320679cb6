-- Per-patient memory graphs: a patient with more memories than an exact scan can search
-- in time gets a table of their own in schema memory_graph with an HNSW index over only
-- their vectors. A filtered search of one shared HNSW index missed half the right
-- memories for a question far from the patient's history (docs/benchmarks.md); a graph
-- of the patient's rows alone has no filter to miss by. Patients below the size are
-- searched exactly, so the shared HNSW index is not needed at all: dropping it also makes
-- every memory insert cheap again (an HNSW insert was most of its cost).
--
-- `memories` stays the source of truth; a graph is kept in step by the trigger below and
-- is read only joined back to it, so a graph row that raced a delete is never returned.
-- storage/memory_graphs.py creates, fills and drops the graphs.

DROP INDEX IF EXISTS memories_embedding_idx;

CREATE SCHEMA IF NOT EXISTS memory_graph;

-- A row while a patient has a graph; ready_at once it holds all their memories.
CREATE TABLE memory_graphs (
    patient_id uuid PRIMARY KEY REFERENCES patients (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    ready_at   timestamptz
);

CREATE FUNCTION memory_graph_table(p_patient uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'p_' || replace(p_patient::text, '-', '')
$$;

-- Register the patient's graph and create its table, with the same vector type as
-- memories.embedding; idempotent (a promotion that crashed is simply run again). Its
-- HNSW index is built once the table is filled (storage/memory_graphs.py).
CREATE FUNCTION memory_graph_create(p_patient uuid)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    vector_type text := (
        SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
        WHERE a.attrelid = 'memories'::regclass AND a.attname = 'embedding');
    graph text := memory_graph_table(p_patient);
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS memory_graph.%I ('
        '  message_id uuid PRIMARY KEY, embedding %s STORAGE PLAIN NOT NULL)',
        graph, vector_type);
    INSERT INTO memory_graphs (patient_id) VALUES (p_patient) ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION memory_graph_drop(p_patient uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM memory_graphs WHERE patient_id = p_patient;
    EXECUTE format('DROP TABLE IF EXISTS memory_graph.%I', memory_graph_table(p_patient));
END
$$;

-- Every write to memories of a patient with a graph is made to the graph too, in the
-- same transaction. A writer that checked before the graph was registered is waited
-- out by the promotion before it copies (storage/memory_graphs.py).
CREATE FUNCTION memory_graph_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM memory_graphs WHERE patient_id = OLD.patient_id) THEN
            EXECUTE format('DELETE FROM memory_graph.%I WHERE message_id = $1',
                           memory_graph_table(OLD.patient_id))
            USING OLD.message_id;
        END IF;
    ELSIF EXISTS (SELECT 1 FROM memory_graphs WHERE patient_id = NEW.patient_id) THEN
        EXECUTE format(
            'INSERT INTO memory_graph.%I (message_id, embedding) VALUES ($1, $2) '
            'ON CONFLICT (message_id) DO UPDATE SET embedding = EXCLUDED.embedding',
            memory_graph_table(NEW.patient_id))
        USING NEW.message_id, NEW.embedding;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memories_graph_write
AFTER INSERT OR UPDATE OF embedding OR DELETE ON memories
FOR EACH ROW EXECUTE FUNCTION memory_graph_write();

-- Core data model: patients, devices, threads, messages, memories and the change log.
-- {{vector_dim}} is replaced by the runner with VECTOR_DIM; it is fixed once applied.

CREATE EXTENSION IF NOT EXISTS vector;

-- sync_version is the patient's latest change-log version. Writers lock this row, which
-- serialises them per patient and keeps versions gapless: a rolled-back write rolls its
-- increment back too.
CREATE TABLE patients (
    id           uuid PRIMARY KEY,
    sync_version bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- device_id is a client-chosen string, unique only within its patient.
CREATE TABLE devices (
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    device_id  text NOT NULL CHECK (length(device_id) BETWEEN 1 AND 128),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, device_id)
);

CREATE TABLE threads (
    id         uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    deleted    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_patient_idx ON threads (patient_id);

CREATE TABLE messages (
    id         uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    thread_id  uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('user', 'assistant')),
    content    text NOT NULL,
    svg_path   text,
    source     text NOT NULL CHECK (source IN ('text', 'voice', 'sync')),
    device_id  text,
    deleted    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_thread_idx ON messages (thread_id, created_at);

-- One row per embedded message. patient_id is repeated here so retrieval never joins
-- to find whose memory a vector is.
CREATE TABLE memories (
    message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    embedding  vector({{vector_dim}}) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_patient_idx ON memories (patient_id);
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops);

-- The change log: one row per applied write to a thread or message, numbered per patient.
-- (patient_id, version) is both the key and the index that "changes after V" reads.
CREATE TABLE changes (
    patient_id  uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    version     bigint NOT NULL CHECK (version > 0),
    entity      text NOT NULL CHECK (entity IN ('thread', 'message')),
    op          text NOT NULL CHECK (op IN ('upsert', 'delete')),
    entity_id   uuid NOT NULL,
    data        jsonb,
    device_id   text,
    mutation_id text,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, version),
    -- A replayed write is recognised by its idempotency key. Scoped to the patient because
    -- device ids are chosen by clients.
    UNIQUE (patient_id, device_id, mutation_id)
);

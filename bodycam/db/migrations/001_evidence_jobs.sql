-- Evidence, durable job state, scenes, detections and tracks.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE videos (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    case_id text NOT NULL CHECK (length(case_id) > 0),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key text NOT NULL,
    original_filename text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    container text NOT NULL,
    codec text NOT NULL,
    width_px int NOT NULL,
    height_px int NOT NULL,
    duration_s double precision NOT NULL,
    media jsonb NOT NULL,
    uploader text NOT NULL,
    officer text NOT NULL,
    device text NOT NULL,
    recorded_at timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    source text NOT NULL DEFAULT 'cli',
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'processing', 'done', 'failed', 'quarantined')),
    stage text NOT NULL DEFAULT 'queued',
    progress real NOT NULL DEFAULT 0,
    attempts int NOT NULL DEFAULT 0,
    error text,
    stage_times jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (case_id, sha256)
);
CREATE INDEX videos_status ON videos (status);

-- One row per chunk of a video: the unit of work with a lease, an attempt count and its error.
CREATE TABLE work_units (
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    idx int NOT NULL,
    start_s double precision NOT NULL,
    end_s double precision NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'quarantined')),
    attempts int NOT NULL DEFAULT 0,
    lease_owner text,
    lease_token uuid,
    lease_until timestamptz,
    last_error text,
    progress real NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (video_id, idx)
);
CREATE INDEX work_units_running ON work_units (lease_until) WHERE state = 'running';

CREATE TABLE scenes (
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    chunk_idx int NOT NULL,
    scene_idx int NOT NULL,
    start_s double precision NOT NULL,
    end_s double precision NOT NULL,
    start_frame int NOT NULL,
    end_frame int NOT NULL,
    start_pts bigint NOT NULL,
    end_pts bigint NOT NULL,
    PRIMARY KEY (video_id, chunk_idx, scene_idx)
);

CREATE TABLE tracks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    chunk_idx int NOT NULL,
    scene_idx int NOT NULL,
    start_s double precision NOT NULL,
    end_s double precision NOT NULL,
    n_detections int NOT NULL,
    quality real NOT NULL,
    thumbnail_key text,
    model text,
    model_version text,
    weights_sha256 text,
    embedding vector,
    created_at timestamptz NOT NULL DEFAULT now(),
    purged_at timestamptz
);
CREATE INDEX tracks_video ON tracks (video_id, start_s);
-- One HNSW index per embedder: the expression casts to that model's dimension.
CREATE INDEX tracks_hnsw_dlib ON tracks
    USING hnsw ((embedding::vector(128)) vector_cosine_ops) WHERE model = 'dlib-resnet';
CREATE INDEX tracks_hnsw_facenet ON tracks
    USING hnsw ((embedding::vector(512)) vector_cosine_ops) WHERE model = 'facenet-vggface2';

-- Detection-level embeddings, so tracks can be rebuilt when the tracker or model changes.
CREATE TABLE detections (
    id bigserial PRIMARY KEY,
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    chunk_idx int NOT NULL,
    track_id uuid REFERENCES tracks (id) ON DELETE SET NULL,
    scene_idx int NOT NULL,
    frame_index int NOT NULL,
    t_s double precision NOT NULL,
    box_px real[] NOT NULL,
    landmarks_px real[],
    probability real NOT NULL,
    sharpness real NOT NULL,
    quality real NOT NULL,
    model text,
    model_version text,
    weights_sha256 text,
    embedding vector
);
CREATE INDEX detections_video ON detections (video_id, chunk_idx);
CREATE INDEX detections_track ON detections (track_id);

-- Objects dropped into incoming/: each (key, etag) is handled once, its outcome kept.
CREATE TABLE incoming_objects (
    key text NOT NULL,
    etag text NOT NULL,
    state text NOT NULL CHECK (state IN ('working', 'ingested', 'rejected')),
    video_id uuid REFERENCES videos (id),
    error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, etag)
);

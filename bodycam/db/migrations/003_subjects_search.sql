-- Watchlist subjects, searches, matches (leads) and their human reviews.
CREATE TABLE subjects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    case_id text NOT NULL CHECK (length(case_id) > 0),
    name text NOT NULL CHECK (length(name) > 0),
    reason text NOT NULL CHECK (length(reason) > 0),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    removed_at timestamptz,
    removed_by text
);
CREATE INDEX subjects_case ON subjects (case_id) WHERE removed_at IS NULL;

CREATE TABLE subject_faces (
    id bigserial PRIMARY KEY,
    subject_id uuid NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    photo_sha256 text NOT NULL,
    photo_key text NOT NULL,
    face_index int NOT NULL,
    box_px real[] NOT NULL,
    quality real NOT NULL,
    model text NOT NULL,
    model_version text NOT NULL,
    weights_sha256 text NOT NULL,
    embedding vector NOT NULL
);
CREATE INDEX subject_faces_subject ON subject_faces (subject_id);

CREATE TABLE searches (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor text NOT NULL,
    case_id text NOT NULL,
    purpose text NOT NULL,
    query_kind text NOT NULL CHECK (query_kind IN ('photo', 'subject', 'track')),
    query_fingerprint text NOT NULL,
    threshold real NOT NULL,
    model text NOT NULL,
    filters jsonb NOT NULL DEFAULT '{}',
    result_track_ids uuid[] NOT NULL DEFAULT '{}',
    result_count int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX searches_case ON searches (case_id, created_at);

CREATE TABLE matches (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subject_id uuid NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    track_id uuid NOT NULL REFERENCES tracks (id) ON DELETE CASCADE,
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    case_id text NOT NULL,
    similarity real NOT NULL,
    threshold real NOT NULL,
    model text NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'confirmed', 'rejected')),
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    UNIQUE (subject_id, track_id)
);
CREATE INDEX matches_status ON matches (status, created_at);

CREATE TABLE reviews (
    id bigserial PRIMARY KEY,
    match_id uuid NOT NULL REFERENCES matches (id) ON DELETE CASCADE,
    reviewer text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('confirm', 'reject')),
    note text NOT NULL CHECK (length(note) > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (match_id, reviewer)
);

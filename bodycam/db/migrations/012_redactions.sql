-- Redaction (issue 13): per-video plans of every face region in every frame, computed once
-- and versioned, and the redacted derivatives rendered from them with their custody record
-- (the derivative's and the original's SHA-256, the plan version, the settings, the reviewer).
-- The application role gets SELECT/INSERT on these through the runner's grants; a derivative
-- row is never updated: its audit row (`redaction.create`) seals what it records.
CREATE TABLE redaction_plans (
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    version int NOT NULL CHECK (version > 0),
    algorithm text NOT NULL,
    original_sha256 text NOT NULL CHECK (original_sha256 ~ '^[0-9a-f]{64}$'),
    plan jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (video_id, version)
);

CREATE TABLE redactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    case_id text NOT NULL,
    plan_version int NOT NULL,
    object_key text NOT NULL UNIQUE,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    original_sha256 text NOT NULL CHECK (original_sha256 ~ '^[0-9a-f]{64}$'),
    settings jsonb NOT NULL,
    report_key text NOT NULL,
    pdf_key text NOT NULL,
    sheet_key text NOT NULL,
    reviewer text NOT NULL,
    audit_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (video_id, plan_version) REFERENCES redaction_plans (video_id, version)
);
CREATE INDEX redactions_video ON redactions (video_id);

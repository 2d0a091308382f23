-- Redaction plans and renders run on the workers as durable jobs (2026-12-06). Until then
-- the server computed a plan (two detectors on every second frame) and rendered inside the
-- request: a 10-minute 1080p video held one request for hours, took the server's CPU from
-- every other user, was lost with a restart of the server, and had the one process that
-- holds the audit and export keys decode uploaded media.
--
-- A worker claims a job with a lease (as a work unit), computes, stores its files and writes
-- the result with state 'computed'; the server alone records it (the plan, or the
-- derivative's custody row and its sealed audit row) and sets 'done' or 'refused'.
CREATE TABLE redaction_jobs (
    id uuid PRIMARY KEY,
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    case_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('plan', 'render')),
    requested_by text NOT NULL,
    request jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'computed', 'done', 'failed', 'refused')),
    attempts int NOT NULL DEFAULT 0,
    lease_owner text,
    lease_token uuid,
    lease_until timestamptz,
    progress real NOT NULL DEFAULT 0,
    error text,
    result jsonb,
    derivative_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX redaction_jobs_video ON redaction_jobs (video_id, created_at);
CREATE INDEX redaction_jobs_open ON redaction_jobs (state, updated_at)
    WHERE state IN ('queued', 'running', 'computed');
-- One plan is computed at a time per video.
CREATE UNIQUE INDEX redaction_jobs_one_plan ON redaction_jobs (video_id)
    WHERE kind = 'plan' AND state IN ('queued', 'running', 'computed');

-- A worker takes a job, renews its lease, and ends it as computed or failed (or gives it
-- back queued); 'done' and 'refused' are the server's, as is every other column.
CREATE FUNCTION redaction_jobs_worker_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('done', 'refused') OR OLD.state IN ('computed', 'done', 'failed', 'refused') THEN
        RAISE EXCEPTION 'a worker does not move a redaction job from % to %', OLD.state,
            NEW.state;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER redaction_jobs_worker_guard BEFORE UPDATE ON redaction_jobs
    FOR EACH ROW WHEN (current_user = 'bodycam_worker')
    EXECUTE FUNCTION redaction_jobs_worker_guard();

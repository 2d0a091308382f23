-- Hardening: a database-side audit high-water mark, explicit reviewer counts, bounded retries
-- of incoming objects, and no face embedding stored while the redact-only profile is in force.

-- The newest audit row the application committed. It only moves forward (trigger), so rows
-- deleted from the end of audit_log leave last_id above the log's end; the verifier
-- cross-checks it with the anchors in the object store (see bodycam/audit.py).
CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id bigint NOT NULL CHECK (last_id > 0),
    last_hash text NOT NULL
);
INSERT INTO audit_head (last_id, last_hash)
    SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1;

CREATE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted';
    END IF;
    IF NEW.last_id < OLD.last_id THEN
        RAISE EXCEPTION 'audit_head only moves forward (% -> %)', OLD.last_id, NEW.last_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

-- Whether reviewers_required was set by an admin (kept across profile switches) or is the
-- profile's default (follows the profile).
ALTER TABLE policy ADD COLUMN reviewers_explicit boolean NOT NULL DEFAULT false;

-- An incoming object that keeps failing is given up after a bounded number of attempts.
ALTER TABLE incoming_objects ADD COLUMN attempts int NOT NULL DEFAULT 0;
ALTER TABLE incoming_objects DROP CONSTRAINT incoming_objects_state_check;
ALTER TABLE incoming_objects ADD CONSTRAINT incoming_objects_state_check
    CHECK (state IN ('working', 'ingested', 'rejected', 'error'));

-- Under redact-only no embedding may exist: whatever code path writes one, the database drops
-- it (tracks, detections) or refuses it (enrolment templates).
CREATE FUNCTION policy_redact_only() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT profile = 'redact-only' FROM policy ORDER BY id DESC LIMIT 1), false)
$$;
CREATE FUNCTION no_embedding_when_redact_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.embedding IS NOT NULL AND policy_redact_only() THEN
        IF TG_TABLE_NAME = 'subject_faces' THEN
            RAISE EXCEPTION 'the redact-only policy forbids storing face templates';
        END IF;
        NEW.embedding := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tracks_redact_only BEFORE INSERT OR UPDATE OF embedding ON tracks
    FOR EACH ROW EXECUTE FUNCTION no_embedding_when_redact_only();
CREATE TRIGGER detections_redact_only BEFORE INSERT OR UPDATE OF embedding ON detections
    FOR EACH ROW EXECUTE FUNCTION no_embedding_when_redact_only();
CREATE TRIGGER subject_faces_redact_only BEFORE INSERT OR UPDATE OF embedding ON subject_faces
    FOR EACH ROW EXECUTE FUNCTION no_embedding_when_redact_only();

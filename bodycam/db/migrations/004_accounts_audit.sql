-- Accounts, case assignments, legal holds, threshold changes, and the tamper-evident audit log.
CREATE TABLE users (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    roles text[] NOT NULL CHECK (roles <@ ARRAY['clerk', 'investigator', 'supervisor',
                                                 'auditor', 'admin']::text[]
                                 AND cardinality(roles) > 0),
    token_sha256 text NOT NULL UNIQUE,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE case_assignments (
    user_name text NOT NULL REFERENCES users (name),
    case_id text NOT NULL,
    assigned_by text NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, case_id)
);

CREATE TABLE held_cases (
    case_id text PRIMARY KEY,
    held_by text NOT NULL,
    reason text NOT NULL,
    held_at timestamptz NOT NULL DEFAULT now()
);

-- Threshold changes approved by a supervisor; the newest row per model is in force.
CREATE TABLE thresholds (
    id bigserial PRIMARY KEY,
    model text NOT NULL,
    default_threshold real NOT NULL,
    floor real NOT NULL CHECK (floor <= default_threshold),
    changed_by text NOT NULL,
    reason text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE subjects ADD COLUMN approved_by text;
ALTER TABLE subjects ADD COLUMN approved_at timestamptz;

ALTER TABLE policy DROP CONSTRAINT policy_profile_check;
ALTER TABLE policy ADD CONSTRAINT policy_profile_check
    CHECK (profile IN ('identify', 'identify-eu', 'redact-only'));
ALTER TABLE policy ADD COLUMN enrolment_approval boolean NOT NULL DEFAULT false;

-- Append-only, hash-chained. id is contiguous from 1; hash = SHA-256 of the row's canonical
-- content and prev_hash; seal = HMAC of hash with a key the database never holds.
CREATE TABLE audit_log (
    id bigint PRIMARY KEY CHECK (id > 0),
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    details jsonb NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL UNIQUE,
    seal text NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_action ON audit_log (action, at);

CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

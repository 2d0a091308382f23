-- Policy profile history: the newest row is in force; every change names who and why.
CREATE TABLE policy (
    id bigserial PRIMARY KEY,
    profile text NOT NULL CHECK (profile IN ('identify', 'redact-only')),
    reviewers_required int NOT NULL DEFAULT 1 CHECK (reviewers_required BETWEEN 1 AND 5),
    retention_days int NOT NULL DEFAULT 30 CHECK (retention_days >= 1),
    changed_by text NOT NULL,
    reason text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

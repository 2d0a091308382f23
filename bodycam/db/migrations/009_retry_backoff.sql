-- Retries wait before they run again (exponential, jittered backoff): a unit that failed is
-- pending but not claimable before not_before. Failures of a service (S3, Redis, Postgres,
-- a model's process) are counted apart from crashes and bad results: a few seconds of outage
-- must not spend the attempts that quarantine a video.
ALTER TABLE work_units ADD COLUMN not_before timestamptz;
ALTER TABLE work_units ADD COLUMN service_failures int NOT NULL DEFAULT 0;
CREATE INDEX work_units_waiting ON work_units (not_before) WHERE state = 'pending';

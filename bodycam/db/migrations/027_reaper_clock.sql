-- When the reaper last ran against the database (leases.after_outage). A database paused past
-- a lease (a VM or container frozen) let every lease in flight lapse, and the reaper's first
-- run on waking took each back as its worker's crash before the worker could renew it: three
-- pauses quarantined a video or failed a plan (bb55). A run that finds the last one long ago
-- gives the leases in flight a lease's time to be renewed first.
CREATE TABLE IF NOT EXISTS reaper_clock (
    id int PRIMARY KEY CHECK (id = 1),
    seen_at timestamptz NOT NULL
);
INSERT INTO reaper_clock (id, seen_at) VALUES (1, now()) ON CONFLICT (id) DO NOTHING;

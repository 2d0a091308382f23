-- A redaction job asked while the broker was down waited for the reaper's stale re-send, four
-- leases (120 s by default) after it was asked, however soon the broker came back (bb45). A
-- job whose message could not be sent is marked, and the reaper's next run sends it. (A work
-- unit whose message could not be sent is marked as one whose wait is over: not_before.)
ALTER TABLE redaction_jobs ADD COLUMN IF NOT EXISTS unsent boolean NOT NULL DEFAULT false;

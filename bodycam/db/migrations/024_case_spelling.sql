-- Case numbers that differ only in letter case name one case: `case-a` beside `CASE-A` split a
-- case in two, and a hold on the one left the other's bystanders to be purged (bb34). A new
-- spelling is refused where a case number first appears (ingest, assignment, hold), by a
-- lookup of the folded number that these indexes serve.
CREATE INDEX IF NOT EXISTS videos_case_folded ON videos (lower(case_id));
CREATE INDEX IF NOT EXISTS subjects_case_folded ON subjects (lower(case_id));

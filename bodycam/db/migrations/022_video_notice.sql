-- A done video with no face may still hold faces the analysis could not see: a camera worn
-- sideways or upside down, with no rotation in its file, was `done` with 0 tracks and
-- nothing said (bb35). A unit with no face track records what a turned picture showed
-- (`turned`: {"deg": 90, "frames": 3, "of": 4}, the display rotation that would show it
-- upright), and the video's `notice` says so to whoever reads its job.
ALTER TABLE work_units ADD COLUMN IF NOT EXISTS turned jsonb;
ALTER TABLE videos ADD COLUMN IF NOT EXISTS notice text;

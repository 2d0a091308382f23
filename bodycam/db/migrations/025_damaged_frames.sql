-- Frames the decoder could only fill in (damaged data: the file's bytes corrupted mid-way,
-- container intact) were analysed as pictures, and a video whose damage hid its only face was
-- `done` with 0 faces, nothing said and nothing audited (bb43). Each unit records how many of
-- its frames the decoder marked corrupt, and over which seconds ({"frames": 37, "from_s":
-- 1.2, "to_s": 2.9}); the video's `notice` and its `processing.done` row say so.
ALTER TABLE work_units ADD COLUMN IF NOT EXISTS damaged jsonb;

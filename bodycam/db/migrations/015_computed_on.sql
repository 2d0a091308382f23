-- Issue 14: what computed each work unit's results (the decoder, and each model's device and
-- precision, e.g. 'decode cpu; detect mtcnn on cuda float32; embed facenet-vggface2 on cuda
-- float16'). Every track and detection belongs to one unit (video_id, chunk_idx); a unit
-- redone on other hardware records the new one with its new rows.
ALTER TABLE work_units ADD COLUMN IF NOT EXISTS computed_on text;

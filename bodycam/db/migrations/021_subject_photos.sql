-- An enrolment photo is a record apart from the template computed from it (2026-12-06).
-- Until then one row held both, and removing an entry, its lapse or the redact-only switch
-- deleted the row with the template: fixity stopped re-hashing the photo of a removed entry,
-- and after the switch an active entry had no photo on record to be enrolled again from
-- (bb33). Templates (subject_faces) are still deleted as before; the photos stay here.
CREATE TABLE subject_photos (
    id bigserial PRIMARY KEY,
    subject_id uuid NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    photo_sha256 text NOT NULL,
    photo_key text NOT NULL,
    face_index int NOT NULL,
    box_px real[] NOT NULL
);
CREATE INDEX subject_photos_subject ON subject_photos (subject_id);
-- One row per photo and face, whatever the number of models that made templates of it.
INSERT INTO subject_photos (subject_id, photo_sha256, photo_key, face_index, box_px)
    SELECT DISTINCT ON (subject_id, photo_key, face_index) subject_id, photo_sha256,
        photo_key, face_index, box_px FROM subject_faces
    ORDER BY subject_id, photo_key, face_index, id;

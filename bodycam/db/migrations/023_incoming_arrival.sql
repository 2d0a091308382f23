-- An object dropped into incoming/ was known by (key, etag) alone, and the etag of the same
-- bytes is the same: the same file put again at the same key (for another case, or with the
-- tags a rejection asked for) was taken as handled and ignored for good, as was a sidecar that
-- arrived after its video was rejected (bb36). `arrival` is when the store says the object and
-- its sidecar were last put; a drop that arrived again is handled again ('' on rows from
-- before: they are left as they were).
ALTER TABLE incoming_objects ADD COLUMN IF NOT EXISTS arrival text NOT NULL DEFAULT '';

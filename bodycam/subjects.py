"""Watchlist subjects: enrolment from photos with face-quality checks, listing, removal."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bodycam import audit, policy, text
from bodycam.accounts import (
    User,
    case_of,
    require,
    require_now,
    require_visible,
    visible_cases,
)
from bodycam.config import Settings
from bodycam.context import Context
from bodycam.db import Conn, uid, uids
from bodycam.domain import FaceDetection, SampledFrame
from bodycam.errors import ConflictError, InvalidInputError, NotFoundError, PermanentError
from bodycam.leads import end_pending
from bodycam.limits import require_rate
from bodycam.media.files import sha256_file
from bodycam.pipeline.faces import FaceEmbedder, Registry

MAX_PHOTO_SIDE_PX = 1920
# The smallest face looked for in a photo, in its pixels once scaled to MAX_PHOTO_SIDE_PX.
PHOTO_MIN_FACE_PX = 20
# A photo's pixels at most (a 48-Mpx phone photo passes): it is decoded whole before it is
# scaled to MAX_PHOTO_SIDE_PX, three bytes a pixel and a copy or two.
MAX_PHOTO_PIXELS = 50_000_000
# What a photo may be: the formats the messages and the web form name, and no other of
# Pillow's decoders (EPS would run Ghostscript where it is installed).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")
# Photos decoded at full size at once, per process: at most 50 Mpx each (about 150 MB and
# its copies), whatever the number of requests.
_DECODING = threading.BoundedSemaphore(2)


class PhotoRefusedError(PermanentError):
    """A photo cannot serve as a face query or enrolment; the message says why."""


@dataclass(frozen=True)
class PhotoFace:
    """The face chosen in a photo, with its embedding and how it was chosen."""

    embedding: np.ndarray = field(repr=False)
    detection: FaceDetection
    face_index: int
    n_faces: int
    sha256: str
    note: str | None
    model: str
    model_version: str
    weights_sha256: str


def open_photo(data: bytes, name: str) -> Image.Image:
    """Open an image without decoding its pixels; raises PhotoRefusedError if it is not one
    or its header claims more than MAX_PHOTO_PIXELS (a few kB of PNG can claim gigabytes)."""
    try:
        img = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:
        raise PhotoRefusedError(f"{name}: the image claims more than {MAX_PHOTO_PIXELS:,}"
                                " pixels: send a smaller photo") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise PhotoRefusedError(f"{name}: not a readable image (use a JPEG, PNG or WebP photo)"
                                ) from None
    w, h = img.size
    if w * h > MAX_PHOTO_PIXELS:
        raise PhotoRefusedError(f"{name}: the image is {w}x{h} pixels, over the limit of "
                                f"{MAX_PHOTO_PIXELS:,}: send a smaller photo")
    # A side that holds no face once the photo is scaled to MAX_PHOTO_SIDE_PX: refused from
    # the header (a 3841x1 PNG of 91 bytes scaled to no rows, a 500; one of 50,000,000x1
    # was decoded first, 300-500 MB: bb30).
    if min(w, h) * min(1.0, MAX_PHOTO_SIDE_PX / max(w, h)) < PHOTO_MIN_FACE_PX:
        raise PhotoRefusedError(f"{name}: the image is {w}x{h} pixels, too small or too narrow"
                                " to hold a face: send a photo of the face")
    return img


def _rgb(img: Image.Image, name: str, side_px: int | None = None) -> Image.Image:
    """An opened photo decoded upright (EXIF rotation applied, its first frame) in RGB, at
    most side_px a side when given (a JPEG is then decoded at a fraction of its size);
    raises PhotoRefusedError if its pixels cannot be read."""
    try:
        if side_px is not None:
            img.thumbnail((side_px, side_px))
        ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright photo
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: its top 8 bits
            # (Pillow's own conversion clips at 255: a photo's face went white.)
            img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError):
        raise PhotoRefusedError(f"{name}: not a readable image (use a JPEG, PNG or WebP photo)"
                                ) from None


def preview_jpeg(data: bytes, name: str, side_px: int) -> bytes:
    """A photo as a JPEG of at most side_px a side, upright, without its metadata."""
    with _DECODING:
        img = _rgb(open_photo(data, name), name, side_px)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def detect_faces(settings: Settings, path: str, data: bytes | None = None
                 ) -> tuple[bytes, np.ndarray, float, list[FaceDetection]]:
    """Read (unless its bytes are given: `path` then only names it) and decode a photo and
    detect its faces, largest first (the order of `face` indexes everywhere): (bytes, image
    as detected, scale, faces in original pixels)."""
    name = Path(path).name
    try:
        data = Path(path).read_bytes() if data is None else data
    except OSError:
        raise PhotoRefusedError(f"{name}: cannot read the file") from None
    with _DECODING:  # a photo's full size is held only while it is scaled down
        img = _rgb(open_photo(data, name), name)
        scale = min(1.0, MAX_PHOTO_SIDE_PX / max(img.size))
        if scale < 1.0:  # scaled as decoded, without an array copy of its full size
            img = img.resize((int(img.width * scale), int(img.height * scale)),
                             Image.Resampling.LANCZOS)
        image = np.asarray(img)
    detector = Registry.detector(
        settings.pipeline.model_copy(update={"min_face_px": PHOTO_MIN_FACE_PX}))
    frame = SampledFrame(0, 0, 0.0, 0, image, scale)
    return data, image, scale, sorted(detector.detect([frame])[0], key=lambda d: -d.height_px)


def face_from_photo(settings: Settings, path: str, face: int | None = None,
                    embedder: FaceEmbedder | None = None, data: bytes | None = None
                    ) -> PhotoFace:
    """Detect, check and embed the face of a photo (its bytes read from `path`, or given).

    The largest face is used unless `face` picks another (faces are numbered largest first).
    Raises PhotoRefusedError when there is no face, or it is too small or too blurred.
    """
    name = Path(path).name
    data, image, scale, faces = detect_faces(settings, path, data)
    cfg, scfg = settings.pipeline, settings.search
    if not faces:
        raise PhotoRefusedError(
            f"no face found in {name}: use a frontal photo with the face at least "
            f"{scfg.enroll_min_face_px} px tall")
    if face is not None and not 0 <= face < len(faces):
        raise InvalidInputError(f"face {face}: {name} has {len(faces)} faces (0 to "
                                f"{len(faces) - 1}, largest first)")
    index = face if face is not None else 0
    chosen = faces[index]
    if chosen.height_px < scfg.enroll_min_face_px:
        raise PhotoRefusedError(
            f"the face in {name} is {chosen.height_px:.0f} px tall, below the "
            f"{scfg.enroll_min_face_px} px needed: use a closer or larger photo")
    if chosen.sharpness < scfg.enroll_min_sharpness:
        raise PhotoRefusedError(
            f"the face in {name} is too blurred (sharpness {chosen.sharpness:.0f},"
            f" minimum {scfg.enroll_min_sharpness:.0f}): use a sharper photo")
    note = None
    if len(faces) > 1 and face is None:
        note = (f"{name} shows {len(faces)} faces: using the largest (index 0); "
                "give the face index to choose another")
    emb = embedder or Registry.embedder(cfg)
    vec = emb.embed(image, [chosen], scale)[0]
    return PhotoFace(vec, chosen, index, len(faces), hashlib.sha256(data).hexdigest(), note,
                     emb.name, emb.version, emb.weights_sha256)


def one_person(settings: Settings, names: list[str], faces: list[PhotoFace]) -> None:
    """Refuse an enrolment whose photos do not all show one person: every two of its faces
    must be at least the embedder's calibrated floor similar, where every pair of photos of
    one person measured is (docs/thresholds.md; most pairs of two people are not). A
    subject enrolled from two people's photos would bring leads for both under one name."""
    if len(faces) < 2:
        return
    model = faces[0].model
    floor = settings.search.threshold_floor.get(model)
    if floor is None:
        raise PhotoRefusedError(f"{model} has no calibrated floor, so photos cannot be checked"
                                " to show one person: enrol from one photo")
    vecs = np.stack([np.asarray(f.embedding, np.float64) for f in faces])
    sims = vecs @ vecs.T
    i, j = np.unravel_index(int(np.argmin(sims)), sims.shape)
    if sims[i, j] < floor:
        a, b = sorted((int(i), int(j)))
        raise PhotoRefusedError(
            f"photo {a + 1} ({names[a]}) and photo {b + 1} ({names[b]}) do not show the same"
            f" person (similarity {sims[a, b]:.3f}, below {model}'s floor {floor}): enrol"
            " each person as a subject of their own, or leave that photo out")


@dataclass(frozen=True)
class Subject:
    """A watchlist entry."""

    subject_id: str
    case_id: str
    name: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    n_faces: int
    approved: bool  # false: enrolled under enrolment approval; not matched until approved

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI."""
        return {"subject_id": self.subject_id, "case": self.case_id, "name": self.name,
                "reason": self.reason, "created_by": self.created_by,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "faces": self.n_faces, "approved": self.approved}


def enroll(ctx: Context, name: str, photos: list[str], case_id: str, reason: str,
           by: User | str, expires_at: datetime | None = None, face: int | None = None
           ) -> tuple[str, list[str]]:
    """Enrol a subject from one or more photos, by an account (`by` a User) or a tool acting
    under its own name; returns (subject_id, notes).

    Every photo is checked, and that they show one person (`one_person`), before anything
    is stored; the photos are kept in the object store by SHA-256 as the record of what was
    enrolled. An account is checked again in the transaction that stores the subject
    (`accounts.require_now`): one disabled or taken off the case while the photos were
    processed stores nothing.
    """
    actor = by.name if isinstance(by, User) else by
    if not case_id.strip():
        raise InvalidInputError("missing case: a subject belongs to a case")
    reason = text.required(reason, "reason", "say why this person is enrolled")
    name = text.required(name, "name", "give the person's name")
    if not photos:
        raise InvalidInputError("at least one photo is needed")
    with ctx.db() as conn:  # before any face is detected or embedded
        policy.require_identify(conn, "enrolment")
        require_rate(conn, ctx.settings, by)
    faces = [face_from_photo(ctx.settings, p, face) for p in photos]
    try:
        one_person(ctx.settings, [Path(p).name for p in photos], faces)
    except PhotoRefusedError as exc:
        # The refusal gives the two faces' similarity: a comparison of faces, recorded as a
        # search is (it was neither recorded nor counted: bb23).
        ctx.audit(actor, "refused", {
            "attempted": "subjects.enroll", "reason": str(exc), "case": case_id.strip(),
            "photos_sha256": [f.sha256 for f in faces], "model": faces[0].model})
        raise
    keys = []
    for p in photos:
        with open(p, "rb") as f:
            stored = ctx.store.put_original(f, sha256_file(p), ctx.settings.limits.max_bytes)
        keys.append(stored.key)
    with ctx.db() as conn:
        if isinstance(by, User):
            require_now(conn, ctx.audit_key, by, "subjects.enroll", case_id.strip())
        require_rate(conn, ctx.settings, by)  # under the audit log's lock
        # Under a profile that requires it, a supervisor approves before any matching.
        approved = not policy.current(conn).enrolment_approval
        row = conn.execute(
            "INSERT INTO subjects (case_id, name, reason, created_by, expires_at, approved_by,"
            " approved_at) VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)"
            " RETURNING id::text AS id",
            (case_id.strip(), name.strip(), reason.strip(), actor, expires_at,
             actor if approved else None, approved)).fetchone()
        assert row is not None
        sid = str(row["id"])
        for pf, key in zip(faces, keys, strict=True):
            conn.execute(
                "INSERT INTO subject_photos (subject_id, photo_sha256, photo_key, face_index,"
                " box_px) VALUES (%s, %s, %s, %s, %s)",
                (sid, pf.sha256, key, pf.face_index, list(pf.detection.box_px)))
            store_template(conn, sid, key, pf)
        audit.append(conn, ctx.audit_key, actor, "subject.enroll", {
            "subject_id": sid, "case": case_id.strip(), "reason": reason.strip(),
            "photos_sha256": [f.sha256 for f in faces], "model": faces[0].model,
            "expires_at": expires_at.isoformat() if expires_at else None})
    return sid, [f.note for f in faces if f.note]


def store_template(conn: Conn, subject_id: str, photo_key: str, pf: PhotoFace) -> None:
    """Store the template of one enrolment photo's face (its photo is on record apart, in
    subject_photos, and outlives the template)."""
    conn.execute(
        "INSERT INTO subject_faces (subject_id, photo_sha256, photo_key, face_index,"
        " box_px, quality, model, model_version, weights_sha256, embedding)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (subject_id, pf.sha256, photo_key, pf.face_index, list(pf.detection.box_px),
         pf.detection.quality, pf.model, pf.model_version, pf.weights_sha256, pf.embedding))


def list_subjects(conn: Conn, case_id: str | None = None, subject_id: str | None = None
                  ) -> list[Subject]:
    """Active subjects (not removed, not expired), optionally of one case, or the one named."""
    rows = conn.execute(
        "SELECT s.id::text AS id, s.case_id, s.name, s.reason, s.created_by, s.created_at,"
        " s.expires_at, s.approved_at IS NOT NULL AS approved, count(f.id) AS n"
        " FROM subjects s LEFT JOIN subject_faces f"
        " ON f.subject_id = s.id WHERE s.removed_at IS NULL"
        " AND (s.expires_at IS NULL OR s.expires_at > now())"
        " AND (%s::text IS NULL OR s.case_id = %s) AND (%s::text IS NULL OR s.id::text = %s)"
        " GROUP BY s.id ORDER BY s.created_at, s.id",
        (case_id, case_id, subject_id, subject_id)).fetchall()
    return [Subject(r["id"], r["case_id"], r["name"], r["reason"], r["created_by"],
                    r["created_at"], r["expires_at"], int(r["n"]), bool(r["approved"]))
            for r in rows]


def get_subject(conn: Conn, subject_id: str) -> Subject:
    """One active subject; raises NotFoundError. (It read the whole watchlist to find one:
    on every search by subject and enrolment.)"""
    found = list_subjects(conn, subject_id=subject_id)
    if not found:
        raise NotFoundError(f"no active subject {subject_id}")
    return found[0]


def view_subjects(conn: Conn, key: str, user: User, case_id: str | None = None
                  ) -> list[Subject]:
    """The watchlist a user may see (their cases only), and an audit row saying who looked."""
    require(conn, key, user, "subjects.list", case_id)  # role, and the case when one is named
    visible = visible_cases(conn, user)
    rows = [s for s in list_subjects(conn, case_id) if visible is None or s.case_id in visible]
    audit.append(conn, key, user.name, "subjects.list", {
        "case": case_id, "cases": sorted({s.case_id for s in rows}), "count": len(rows),
        "subject_ids": [s.subject_id for s in rows]})
    return rows


def remove_subject(conn: Conn, key: str, subject_id: str, user: User) -> None:
    """Take a subject off the watchlist; its biometric templates are deleted, the record kept.
    Only a subject of a case the user may see (others are refused and audited)."""
    case = require_visible(conn, key, user, "subjects.remove", "subject", subject_id,
                           case_of(conn, "subject", subject_id))
    actor = user.name
    # Of two removals at once, the second finds it removed (the audit log's lock); under it,
    # the account as it stands now (one taken off the case meanwhile was recorded after it).
    require_now(conn, key, user, "subjects.remove", case)
    subject = get_subject(conn, subject_id)
    audit.append(conn, key, actor, "subject.remove",
                 {"subject_id": subject_id, "case": subject.case_id})
    retire(conn, key, [subject_id], actor, "its watchlist entry was removed")


def retire(conn: Conn, key: str, subject_ids: Sequence[object], actor: str, why: str
           ) -> None:
    """Take subjects off the watchlist (on removal, or by a purge once lapsed): the record
    stays, marked removed; their biometric templates are deleted and their pending matches
    ended (`leads.end_pending`, which audits them). The caller audits the removal."""
    ids = uids(subject_ids)
    conn.execute("UPDATE subjects SET removed_at = now(), removed_by = %s WHERE id = ANY(%s)",
                 (actor, ids))
    conn.execute("DELETE FROM subject_faces WHERE subject_id = ANY(%s)", (ids,))
    end_pending(conn, key, actor, why, ids)


def enrol_again(ctx: Context) -> tuple[list[str], list[str]]:
    """Compute again, from their photos on record, the templates of the active entries that
    have none for the embedder (the redact-only switch deleted them: they stayed listed and
    matched nothing, bb33), each photo's face the one chosen at its enrolment; returns the
    entries given templates, and those whose photos are gone from the store or no longer
    yield the face (named, not refused: the caller reports them; one such photo failed the
    whole reprocess). Not under the redact-only profile (its trigger
    refuses a template)."""
    model = ctx.settings.pipeline.embedder
    with ctx.db() as conn:
        rows = conn.execute(
            "SELECT p.subject_id::text AS sid, p.photo_key, p.photo_sha256, p.face_index"
            " FROM subject_photos p JOIN subjects s ON s.id = p.subject_id"
            " WHERE s.removed_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())"
            " AND NOT EXISTS (SELECT 1 FROM subject_faces f WHERE f.subject_id = s.id"
            " AND f.model = %s) ORDER BY s.created_at, s.id, p.id", (model,)).fetchall()
    done: dict[str, list[tuple[str, PhotoFace]]] = {}
    failed: list[str] = []
    for r in rows:
        sid, key = str(r["sid"]), str(r["photo_key"])
        if sid in failed:
            continue
        try:
            pf = face_from_photo(ctx.settings, f"photo {str(r['photo_sha256'])[:12]}",
                                 int(r["face_index"]), data=ctx.store.get_bytes(key))
        except (PhotoRefusedError, InvalidInputError, NotFoundError):  # or gone from the store
            failed.append(sid)
            done.pop(sid, None)
            continue
        done.setdefault(sid, []).append((key, pf))
    with ctx.db() as conn:
        audit.lock(conn)  # one reprocess at a time stores them: an entry gets them once
        for sid, faces in list(done.items()):
            if conn.execute(
                    "SELECT 1 FROM subjects s WHERE s.id = %s AND s.removed_at IS NULL AND NOT"
                    " EXISTS (SELECT 1 FROM subject_faces f WHERE f.subject_id = s.id AND"
                    " f.model = %s)", (uid(sid), model)).fetchone() is None:
                del done[sid]  # removed, or given them by another run, meanwhile
                continue
            for key, pf in faces:
                store_template(conn, sid, key, pf)
    return list(done), failed


def approve_subject(conn: Conn, key: str, subject_id: str, user: User) -> None:
    """A supervisor approves an enrolment (never their own); matching may then start.
    Not under the redact-only profile; only a subject of a case the user may see."""
    case = require_visible(conn, key, user, "subjects.approve", "subject", subject_id,
                           case_of(conn, "subject", subject_id))
    policy.require_identify(conn, "enrolment approval")
    actor = user.name
    # Of two approvals at once, the second finds it approved (the audit log's lock); under
    # it, the account as it stands now.
    require_now(conn, key, user, "subjects.approve", case)
    row = conn.execute("SELECT created_by, approved_at FROM subjects WHERE id = %s"
                       " AND removed_at IS NULL", (uid(subject_id),)).fetchone()
    if row is None:
        raise NotFoundError(f"no active subject {subject_id}")
    if row["approved_at"] is not None:
        raise ConflictError(f"subject {subject_id} is already approved")
    if row["created_by"] == actor:
        raise policy.ReviewRefusedError(
            "an enrolment must be approved by someone other than its author")
    conn.execute("UPDATE subjects SET approved_by = %s, approved_at = now() WHERE id = %s",
                 (actor, uid(subject_id)))
    audit.append(conn, key, actor, "subject.approve", {"subject_id": subject_id, "case": case})


def subject_vectors(conn: Conn, subject_id: str, model: str) -> list[np.ndarray]:
    """A subject's enrolment vectors for one model."""
    rows = conn.execute(
        "SELECT embedding FROM subject_faces WHERE subject_id = %s AND model = %s",
        (subject_id, model)).fetchall()
    return [np.asarray(r["embedding"].to_numpy(), np.float32) for r in rows]

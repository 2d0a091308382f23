""""Where does this person appear": candidates from pgvector, exact re-rank, time ranges."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pgvector import Vector

from bodycam import audit, policy, text
from bodycam.accounts import Scope, User, case_of, require_now
from bodycam.case_vectors import FINGERPRINT_SQL, CaseVectors
from bodycam.config import Settings
from bodycam.context import Context
from bodycam.db import Conn, uid
from bodycam.domain import FIRST_FRAME_COLUMNS, first_frame_s
from bodycam.errors import InvalidInputError, NotFoundError
from bodycam.limits import require_rate
from bodycam.search_args import Filters, Probe, check_similarity
from bodycam.subjects import face_from_photo, get_subject, subject_vectors

MAX_LIMIT = 1000  # appearances one search returns at most (a page of a list: 1000)

DIMS = {"dlib-resnet": 128, "facenet-vggface2": 512}


@dataclass(frozen=True)
class Query:
    """What is searched for: unit vectors of one model and a fingerprint for the record."""

    kind: str
    vectors: list[np.ndarray] = field(repr=False)
    model: str
    fingerprint: str
    note: str | None = None
    subject_id: str | None = None  # set for subject searches: open-set identification
    track_id: str | None = None  # set for track searches


@dataclass(frozen=True)
class Appearance:
    """Tracks of the person in one video merged into one time range (the --json contract)."""

    video_id: str
    filename: str
    sha256: str
    start_s: float
    end_s: float
    similarity: float
    track_ids: tuple[str, ...]
    thumbnail: str | None
    quality: float = 0.0  # of the best-matching track: size, sharpness, confidence (0-1)
    first_frame_s: float = 0.0  # the video's first frame in its file: a player adds it

    def as_json(self) -> dict[str, object]:
        """JSON object for the CLI."""
        return {"video_id": self.video_id, "filename": self.filename, "sha256": self.sha256,
                "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "similarity": round(self.similarity, 4), "quality": round(self.quality, 3),
                "track_ids": list(self.track_ids), "thumbnail": self.thumbnail,
                "first_frame_s": self.first_frame_s}


@dataclass(frozen=True)
class SearchResult:
    """Ranked leads, with the threshold and model that produced them."""

    search_id: str
    results: list[Appearance]
    threshold: float
    model: str
    note: str | None = None

    def as_json(self) -> dict[str, object]:
        """The `search --json` contract."""
        return {"search_id": self.search_id, "results": [a.as_json() for a in self.results],
                "threshold": self.threshold, "model": self.model}


def threshold_bounds(settings: Settings, model: str, conn: Conn | None = None
                     ) -> tuple[float, float]:
    """(default, floor) of a model: the configured calibration, or a supervisor-approved
    change recorded in the database, which never goes below the calibrated floor."""
    default = settings.search.default_threshold.get(model)
    calibrated = floor = settings.search.threshold_floor.get(model)
    if conn is not None:
        row = conn.execute("SELECT default_threshold, floor FROM thresholds WHERE model = %s"
                           " ORDER BY id DESC LIMIT 1", (model,)).fetchone()
        if row is not None:
            default, floor = float(row["default_threshold"]), float(row["floor"])
            if calibrated is not None:
                floor, default = max(floor, calibrated), max(default, calibrated)
    if default is None or floor is None:
        raise InvalidInputError(f"no calibrated threshold for model {model}: calibrate it first "
                                "(python -m bodycam.calibration) and set BODYCAM_SEARCH__...")
    return default, floor


def resolve_threshold(settings: Settings, model: str, requested: float | None,
                      conn: Conn | None = None, *, video_probe: bool = False) -> float:
    """The default, or a requested value that may not go below the floor.

    A supervisor-approved change recorded in the database (`bodycam thresholds set`) takes
    precedence over the configured values, but never goes below the calibrated floor
    (configured per model, measured in docs/thresholds.md).

    `video_probe`: the probe is a face from video too (a track search; the grouping of
    unknown persons keeps the photo default, measured in docs/thresholds.md). Its default is
    at least the linker's `pipeline.track_relink_similarity`, the similarity at which two
    tracks apart in time are taken for one person. Two video faces of different people in
    like conditions (the same camera, night, tilt) score higher than a photo and a video
    face do: at the photo default, track searches were the least
    precise path (0.927 on test seeds 7500-7529, photo searches 0.973), and one pair of
    people 0.9302 alike joined at 0.93 or not with the machine's floating point
    (docs/thresholds.md). A requested value is taken as asked.
    """
    default, floor = threshold_bounds(settings, model, conn)
    if requested is None:
        if video_probe:
            return max(default, settings.pipeline.track_relink_similarity.get(model, default))
        return default
    check_similarity(requested, "threshold")
    if requested < floor:
        raise InvalidInputError(
            f"threshold {requested} is below the floor {floor} for {model}: thresholds can be "
            "raised to be stricter, never lowered below the calibrated floor")
    return requested


def set_thresholds(conn: Conn, key: str, settings: Settings, actor: str, model: str,
                   default: float, floor: float, reason: str) -> None:
    """Record a supervisor-approved default and floor for a model (role checked by the
    caller). Neither may go below the model's calibrated floor; the change is audited."""
    if model not in DIMS:
        raise InvalidInputError(f"unknown model {model}: choose from {', '.join(DIMS)}")
    check_similarity(default, "default")
    check_similarity(floor, "floor")
    reason = text.required(reason, "reason", "a threshold change must say why")
    if not 0 < floor <= default <= 1:
        raise InvalidInputError("need 0 < floor <= default <= 1 (cosine similarity)")
    calibrated = settings.search.threshold_floor.get(model)
    if calibrated is None:
        raise InvalidInputError(f"no calibrated floor for model {model}: calibrate it first "
                                "(python -m bodycam.calibration, docs/thresholds.md)")
    if floor < calibrated:
        raise InvalidInputError(
            f"floor {floor} is below the calibrated floor {calibrated} for {model} "
            "(docs/thresholds.md): a floor can be raised, never lowered below calibration")
    conn.execute("INSERT INTO thresholds (model, default_threshold, floor, changed_by,"
                 " reason) VALUES (%s, %s, %s, %s, %s)",
                 (model, default, floor, actor, reason.strip()))
    audit.append(conn, key, actor, "threshold.change",
                 {"model": model, "default": default, "floor": floor,
                  "calibrated_floor": calibrated, "reason": reason.strip()})


def query_from_photo(settings: Settings, path: str, face: int | None = None) -> Query:
    """Embed the face of a probe photo with the configured embedder."""
    pf = face_from_photo(settings, path, face)
    # Which face of the photo was searched for, and where it is: searches for two people of
    # one group photo were recorded alike.
    box = ",".join(str(round(v)) for v in pf.detection.box_px)
    return Query("photo", [pf.embedding], pf.model,
                 f"sha256:{pf.sha256}#face={pf.face_index}@{box}", pf.note)


def query_from_subject(conn: Conn, settings: Settings, subject_id: str, scope: Scope) -> Query:
    """A subject's enrolment vectors for the configured embedder; only an approved subject of
    the scope's case (any other is refused and the refusal audited)."""
    scope.require(conn, "search", "subject", subject_id, case_of(conn, "subject", subject_id))
    get_subject(conn, subject_id)
    row = conn.execute("SELECT approved_at FROM subjects WHERE id = %s",
                       (uid(subject_id),)).fetchone()
    if row is None or row["approved_at"] is None:  # as matching and the gallery: not yet used
        raise policy.PolicyRefusedError(
            f"subject {subject_id} awaits a supervisor's approval: an enrolment is searched "
            f"for and matched only once approved")
    model = settings.pipeline.embedder
    vecs = subject_vectors(conn, subject_id, model)
    if not vecs:
        raise InvalidInputError(f"subject {subject_id} has no {model} enrolment: re-enrol them")
    return Query("subject", vecs, model, f"subject:{subject_id}", subject_id=subject_id)


def query_from_track(conn: Conn, track_id: str, scope: Scope) -> Query:
    """A stored track's representative vector (any model it was made with); only a track of
    the scope's case (any other is refused and the refusal audited)."""
    scope.require(conn, "search", "track", track_id, case_of(conn, "track", track_id))
    row = conn.execute("SELECT model, embedding FROM tracks WHERE id = %s"
                       " AND embedding IS NOT NULL AND purged_at IS NULL",
                       (uid(track_id),)).fetchone()
    if row is None:
        raise NotFoundError(f"no track {track_id} with an embedding")
    return Query("track", [np.asarray(row["embedding"].to_numpy(), np.float32)],
                 str(row["model"]), f"track:{track_id}", track_id=track_id)


@dataclass(frozen=True)
class Candidate:
    """One candidate track as read once: what ranking, the open-set rule and time ranges need."""

    track_id: str
    similarity: float  # exact cosine similarity to the query (the best of its vectors)
    video_id: str
    start_s: float
    end_s: float
    thumbnail: str | None
    filename: str
    sha256: str
    quality: float
    rival: float | None = None  # best similarity to a rival subject (rival_vectors)
    first_frame_s: float = 0.0  # the video's first frame in its file (domain.first_frame_s)


def candidate_tracks(conn: Conn, settings: Settings, query: Query, case_id: str,
                     filters: Filters, k: int, rivals: Sequence[np.ndarray] = (),
                     cache: CaseVectors | None = None, floor: float | None = None
                     ) -> list[Candidate]:
    """The k nearest tracks, best first, each with its exact similarity computed by Postgres.

    Small filtered sets are searched exactly: from the server's checked copy of the case's
    vectors (`cache`, bodycam/case_vectors.py) when the search has no video or date filter,
    else by a scan that reads each row once and computes its distance once. Larger sets use
    the model's HNSW index with an iterative scan so that a WHERE filter never starves the
    result. A search sends no track vector over the wire (400 512-d vectors as text cost more
    than the search); the copy reads the case's once per change. The candidates of all
    query vectors are re-ranked by their best similarity.
    With `rivals` (other enrolled subjects' vectors), each candidate also carries its best
    similarity to any of them, computed on the k rows only. With `floor`, candidates below
    that similarity may be left out (the caller has no use for them): the cached path then
    reads only the rows that can reach it.
    """
    dim = DIMS.get(query.model)
    if dim is None:
        raise InvalidInputError(f"unknown model {query.model}")
    where = ("t.model = %(model)s AND t.embedding IS NOT NULL AND t.purged_at IS NULL"
             " AND v.case_id = %(case)s"
             " AND (%(video)s::uuid IS NULL OR v.id = %(video)s::uuid)"
             " AND (%(from)s::timestamptz IS NULL OR"
             "      COALESCE(v.recorded_at, v.ingested_at) >= %(from)s::timestamptz)"
             " AND (%(to)s::timestamptz IS NULL OR"
             "      COALESCE(v.recorded_at, v.ingested_at) <= %(to)s::timestamptz)")
    video = uid(filters.video_id) if filters.video_id is not None else None
    if filters.video_id is not None and video is None:
        return []  # not a video id: nothing can match
    params: dict[str, object] = {"model": query.model, "case": case_id, "video": video,
                                 "from": filters.date_from, "to": filters.date_to, "k": k,
                                 "rivals": [Vector(r).to_text() for r in rivals] or None,
                                 "qs": [Vector(v).to_text() for v in query.vectors]}
    # The copy needs the case's fingerprint; every other path only its count.
    copyable = (cache is not None and video is None and filters.date_from is None
                and filters.date_to is None)
    fp = conn.execute(f"{FINGERPRINT_SQL if copyable else 'SELECT count(*) AS n'}"
                      f" FROM tracks t JOIN videos v ON v.id = t.video_id WHERE {where}",
                      params).fetchone()
    assert fp is not None
    exact = int(fp["n"]) <= settings.search.exact_scan_max
    # Each chosen row's similarity: the best over the query vectors; its rival similarity:
    # the best over the other subjects' vectors. The vectors are parsed once per statement
    # (the CTE), not once per row.
    vecs = (f"WITH qv AS MATERIALIZED (SELECT %(qs)s::text[]::vector({dim})[] AS qs,"
            f" %(rivals)s::text[]::vector({dim})[] AS rs)")
    sim = "(SELECT max(1 - (t.embedding <=> x)) FROM unnest(qv.qs) x)"
    rival = "(SELECT max(1 - (t.embedding <=> x)) FROM unnest(qv.rs) x)"
    cols = ("t.id::text AS id, t.video_id::text AS video_id, t.start_s, t.end_s,"
            " t.thumbnail_key, t.quality, v.original_filename, v.sha256, "
            + FIRST_FRAME_COLUMNS)
    matrix = (cache.matrix(conn, case_id, query.model, dim, where, params,
                           (int(fp["n"]), int(fp["s"]), int(fp["x"])))
              if cache is not None and copyable and exact else None)
    if matrix is not None:
        # Margins (16 places over k, 1e-3 under the floor) absorb float32 rounding at the
        # edges; Postgres re-scores the chosen rows (same filters) and the best k are kept.
        params["ids"] = matrix.top(np.stack(query.vectors), k + 16,
                                   -1.0 if floor is None else floor - 1e-3)
        rows = conn.execute(
            f"{vecs} SELECT {cols}, {sim} AS sim, {rival} AS rival FROM qv,"
            f" unnest(%(ids)s::uuid[]) c(id) JOIN tracks t ON t.id = c.id"
            f" JOIN videos v ON v.id = t.video_id WHERE {where}",
            params).fetchall()
    else:
        if not exact:
            conn.execute(f"SET LOCAL hnsw.ef_search = {int(settings.search.ef_search)}")
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
        rows = []
        for vec in query.vectors:
            params["q"] = Vector(vec)
            if exact:
                # Only (id, distance) is carried through the scan and the top-k sort; OFFSET 0
                # fences the scan off from the ORDER BY, so the planner cannot answer it from
                # the approximate index.
                near = (f"SELECT id FROM (SELECT t.id, t.embedding <=> %(q)s::vector AS d"
                        f" FROM tracks t JOIN videos v ON v.id = t.video_id WHERE {where}"
                        f" OFFSET 0) s ORDER BY d LIMIT %(k)s")
            else:
                near = (f"SELECT t.id FROM tracks t JOIN videos v ON v.id = t.video_id"
                        f" WHERE {where} ORDER BY (t.embedding::vector({dim})"
                        f" <=> %(q)s::vector({dim})) LIMIT %(k)s")
            rows += conn.execute(
                f"{vecs} SELECT {cols}, {sim} AS sim, {rival} AS rival FROM qv, ({near}) c"
                f" JOIN tracks t ON t.id = c.id JOIN videos v ON v.id = t.video_id",
                params).fetchall()
    best: dict[str, Candidate] = {}
    for r in rows:
        best[str(r["id"])] = Candidate(
            str(r["id"]), float(r["sim"]), str(r["video_id"]), float(r["start_s"]),
            float(r["end_s"]), str(r["thumbnail_key"]) if r["thumbnail_key"] else None,
            str(r["original_filename"]), str(r["sha256"]), float(r["quality"]),
            None if r["rival"] is None else float(r["rival"]), first_frame_s(r))
    return sorted(best.values(), key=lambda c: (-c.similarity, c.track_id))[:k]


# Scores this close count as a tie: a track is a lead for every subject that ties for best
# (the same person enrolled twice in a case must not lose their tracks to the duplicate).
RANK1_TIE = 1e-4


def case_gallery(conn: Conn, case_id: str, model: str) -> dict[str, np.ndarray]:
    """Enrolment vectors (one row per photo) of each active, approved subject of a case."""
    rows = conn.execute(
        "SELECT f.subject_id::text AS sid, f.embedding FROM subject_faces f JOIN subjects s"
        " ON s.id = f.subject_id WHERE s.case_id = %s AND f.model = %s"
        " AND s.removed_at IS NULL AND s.approved_at IS NOT NULL"
        " AND (s.expires_at IS NULL OR s.expires_at > now())", (case_id, model)).fetchall()
    by_subject: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in rows:
        by_subject[str(r["sid"])].append(np.asarray(r["embedding"].to_numpy(), np.float32))
    return {sid: np.stack(v) for sid, v in by_subject.items()}


def best_subjects(track_vectors: np.ndarray, gallery: dict[str, np.ndarray]
                  ) -> list[dict[str, float]]:
    """Open-set identification: for each track, the enrolled subject(s) that explain it best.

    A subject's score is its best photo's cosine similarity. Returns, per track, the subjects
    tying for the top score (usually one) with that score; the caller applies the threshold.

    Why: dlib places poor faces (profiles, small or blurred ones) close to many people at
    once. A close profile of one person scored 0.90 against another's enrolment photo, above
    genuine scores of some 40 px faces, so no single threshold gives both recall and
    precision. Such a face is still nearer to its own subject than to the other enrolled
    ones, so a track is a lead only for the subject that matches it best; the threshold then
    decides whether it is anyone enrolled at all.
    """
    if not gallery or len(track_vectors) == 0:
        return [{} for _ in range(len(track_vectors))]
    sids = list(gallery)
    scores = np.stack([np.max(track_vectors @ gallery[s].T, axis=1) for s in sids], axis=1)
    top = np.max(scores, axis=1)
    return [{sids[j]: float(row[j]) for j in np.flatnonzero(row >= best - RANK1_TIE)}
            for row, best in zip(scores, top, strict=True)]


def rival_vectors(conn: Conn, settings: Settings, query: Query, case_id: str
                  ) -> list[np.ndarray]:
    """The enrolment vectors a track must not match better than the query (best_subjects'
    rule, applied in candidate_tracks): a track is a lead only when the query explains it
    at least as well as any of them.

    For a subject search, the case's other subjects. For a photo search, the case's
    subjects the photo may be a picture of left out (photo_rivals): a photo of a person
    nobody enrolled returned a lookalike's tracks (bb29: 0.934-0.946, two of them above the
    0.94 at which no photo pair matched) that the lookalike's own entry in the case matched
    better. A track search has none: its probe is a face from video, too poor a picture to
    tell which entries it might be.
    """
    if query.subject_id is None and query.kind != "photo":
        return []
    gallery = case_gallery(conn, case_id, query.model)
    if query.subject_id is not None:
        gallery.pop(query.subject_id, None)
        return [v for vecs in gallery.values() for v in vecs]
    if not gallery:
        return []
    _default, floor = threshold_bounds(settings, query.model, conn)
    return photo_rivals(np.stack(query.vectors), gallery, floor)


def photo_rivals(probe: np.ndarray, gallery: dict[str, np.ndarray], floor: float
                 ) -> list[np.ndarray]:
    """The enrolment vectors of the subjects a probe photo is not a picture of: those whose
    every photo scores under the calibrated floor against it. Every genuine pair of photos
    calibrated scored above the floor (docs/thresholds.md), so a photo of an enrolled person
    never makes that person's own entry its rival and loses their tracks to it."""
    return [v for vecs in gallery.values() if float(np.max(probe @ vecs.T)) < floor
            for v in vecs]


def leads(cands: Sequence[Candidate], threshold: float) -> list[Candidate]:
    """Candidates at or above the threshold that no other enrolled subject explains better."""
    return [c for c in cands if c.similarity >= threshold
            and (c.rival is None or c.similarity >= c.rival - RANK1_TIE)]


def appearances(cands: Sequence[Candidate], merge_gap_s: float) -> list[Appearance]:
    """Merge a person's tracks that touch or overlap in one video into time ranges."""
    by_video: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(cands, key=lambda c: (c.video_id, c.start_s)):
        by_video[c.video_id].append(c)
    out: list[Appearance] = []
    for vid, tracks in by_video.items():
        group: list[Candidate] = []
        end = -1.0

        def flush(group: list[Candidate], vid: str = vid) -> None:
            best = max(group, key=lambda g: g.similarity)
            out.append(Appearance(
                video_id=vid, filename=best.filename, sha256=best.sha256,
                start_s=min(g.start_s for g in group), end_s=max(g.end_s for g in group),
                similarity=best.similarity, track_ids=tuple(g.track_id for g in group),
                thumbnail=best.thumbnail, quality=best.quality,
                first_frame_s=best.first_frame_s))

        for t in tracks:
            if group and t.start_s > end + merge_gap_s:
                flush(group)
                group = []
            end = max(end, t.end_s) if group else t.end_s
            group.append(t)
        if group:
            flush(group)
    return sorted(out, key=lambda a: (-a.similarity, a.video_id, a.start_s))


def record_check(conn: Conn, key: str, settings: Settings, by: User | str, case: str,
                 query: Query) -> None:
    """Before a search is recorded: an account that was disabled, lost its role or its case,
    or a probe subject removed or lapsed while it ran, refuses it as a new search would be
    (401, 403 audited, 404), as does the account's hourly number of searches and enrolments
    reached meanwhile (429, audited). Read under the audit log's lock, which those changes and other
    searches' records hold until they commit, so one made later waits until this search is
    recorded."""
    audit.lock(conn)
    if isinstance(by, User):
        require_now(conn, key, by, "search", case)
    require_rate(conn, settings, by)
    if query.subject_id is not None:
        get_subject(conn, query.subject_id)


def bound_case(case_id: str | None) -> str:
    """The case a search or a look at a probe photo is bound to; refused when none is named."""
    if not case_id or not case_id.strip():
        raise InvalidInputError("missing case: every search is bound to a case")
    return case_id.strip()


def bound(case_id: str | None, purpose: str | None) -> tuple[str, str]:
    """A search's case and purpose, both required (the one rule for every caller)."""
    return bound_case(case_id), text.required(purpose, "purpose",
                                              "every search records why it was made")


def search(ctx: Context, probe: Probe | Query, case_id: str, purpose: str,
           by: User | str, threshold: float | None = None, limit: int | None = None,
           filters: Filters | None = None) -> SearchResult:
    """Run and record one search bound to a case and a purpose, by an account (`by` a User)
    or by a tool acting under its own name (evaluation).

    In order: the case and purpose are required; the policy must allow identification and a
    requested threshold must be valid *before* any face is detected or embedded; every id
    (subject, track, video filter) must belong to the case, else the attempt is refused and
    audited; then the search runs and is recorded with its results. What it depends on and
    others may change meanwhile (the account, its case, the probe subject) is read again
    under the audit log's lock in the transaction that records it (`record_check`).
    """
    actor = by.name if isinstance(by, User) else by
    case, purpose = bound(case_id, purpose)
    scope = Scope(actor, case, ctx.audit_key)
    filters = filters or Filters()
    lim = limit if limit is not None else ctx.settings.search.default_limit
    if not 1 <= lim <= MAX_LIMIT:
        raise InvalidInputError(f"limit {lim}: between 1 and {MAX_LIMIT}")
    query = probe if isinstance(probe, Query) else None
    if query is None:  # a probe: checked before any face is detected or vector read
        assert isinstance(probe, Probe)
        with ctx.db() as conn:
            policy.require_identify(conn, "search")
            require_rate(conn, ctx.settings, by)  # and again where it is recorded
            if filters.video_id is not None:
                scope.require(conn, "search", "video", filters.video_id,
                              case_of(conn, "video", filters.video_id))
            if probe.photo is not None:
                resolve_threshold(ctx.settings, ctx.settings.pipeline.embedder, threshold, conn)
            else:
                query = (query_from_subject(conn, ctx.settings, probe.subject_id, scope)
                         if probe.subject_id is not None
                         else query_from_track(conn, str(probe.track_id), scope))
        if query is None:
            assert probe.photo is not None
            query = query_from_photo(ctx.settings, probe.photo, probe.face)
    with ctx.db() as conn:
        policy.require_identify(conn, "search")
        thr = resolve_threshold(ctx.settings, query.model, threshold, conn,
                                video_probe=query.track_id is not None)
        if query.subject_id is not None:
            scope.require(conn, "search", "subject", query.subject_id,
                          case_of(conn, "subject", query.subject_id))
        if query.track_id is not None:
            scope.require(conn, "search", "track", query.track_id,
                          case_of(conn, "track", query.track_id))
        if filters.video_id is not None:
            scope.require(conn, "search", "video", filters.video_id,
                          case_of(conn, "video", filters.video_id))
        rivals = rival_vectors(conn, ctx.settings, query, case)
        cands = candidate_tracks(conn, ctx.settings, query, case, filters,
                                 k=max(200, lim * 20), rivals=rivals, cache=ctx.vectors,
                                 floor=thr)
        results = appearances(leads(cands, thr), ctx.settings.search.merge_gap_s)[:lim]
        record_check(conn, ctx.audit_key, ctx.settings, by, case, query)
        track_ids = [t for a in results for t in a.track_ids]
        row = conn.execute(
            "INSERT INTO searches (actor, case_id, purpose, query_kind, query_fingerprint,"
            " threshold, model, filters, result_track_ids, result_count)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::uuid[], %s) RETURNING id::text AS id",
            (actor, case, purpose.strip(), query.kind,
             query.fingerprint, thr, query.model,
             json.dumps(filters.as_json()), track_ids, len(results))).fetchone()
        assert row is not None
        audit.append(conn, ctx.audit_key, actor, "search", {
            "search_id": str(row["id"]), "case": case, "purpose": purpose.strip(),
            "query": query.kind, "query_fingerprint": query.fingerprint, "threshold": thr,
            "model": query.model, "filters": filters.as_json(), "result_count": len(results),
            "result_track_ids": track_ids,
            "result_video_ids": sorted({a.video_id for a in results}),
            # What the investigator was shown, as it was ranked (the ids alone could not say
            # it once retention purged the tracks), and how many results were asked for.
            "limit": lim, "results": [
                {"video_id": a.video_id, "start_s": round(a.start_s, 3),
                 "end_s": round(a.end_s, 3), "similarity": round(a.similarity, 4)}
                for a in results]})
    return SearchResult(str(row["id"]), results, thr, query.model, query.note)

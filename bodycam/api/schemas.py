"""API schemas: the JSON bodies of requests and responses (separate from tables)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")
NUL = "\x00"
TEXT_MAX = 2000  # characters of a free-text field (a reason, a note, a purpose) at most


def _trimmed(value: str | None) -> str | None:
    return value.strip() if value is not None else None


# A case number wherever a request names one: trimmed, as ingest, assignment and holds store
# it (an unassign or a filter sent with the spaces an assignment had stripped missed the case,
# and its refusals were recorded under the untrimmed text: bb34).
CASE = AfterValidator(_trimmed)


def has_nul(value: object) -> bool:
    """Whether a parsed JSON value holds a NUL character in any string, key or item."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


class Body(BaseModel):
    """A request body: unknown fields are refused, text is at most 2,000 characters unless
    a field says otherwise, no string holds a NUL character (PostgreSQL stores none), every
    number is finite (an end time of 1e309 overflowed where it was used), and true or false
    is taken by boolean fields only."""

    model_config = ConfigDict(extra="forbid", str_max_length=TEXT_MAX, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if has_nul(data):
            raise ValueError("a string holds a NUL character (\\u0000), which no field accepts")
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_others(cls, data: Any) -> Any:
        # A JSON true or false where a number or text is asked is refused: lax parsing took
        # `"reviewers": true` for a count of 1 (bb53).
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None \
                        and bool not in (field.annotation, *get_args(field.annotation)):
                    raise ValueError(f"{name}: true or false is not a value of this field")
        return data


class Out(BaseModel):
    """A response body: the fields documented, plus any the library adds."""

    model_config = ConfigDict(extra="allow")


class PageOf(BaseModel, Generic[T]):
    """One page of a list; follow `next_offset` until it is null."""

    items: list[T]
    next_offset: int | None


class LoginIn(Body):
    """An account's name and its API token."""

    user: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=512)


class SessionOut(Out):
    """A session token (shown once) and whose it is."""

    token: str
    user: str
    roles: list[str]
    expires_at: str


class MeOut(Out):
    """The caller's account."""

    user: str
    roles: list[str]
    cases: list[str] | None = Field(description="the cases the caller sees; null: all")
    expires_at: str


class LogoutOut(Out):
    """The token used is revoked."""

    user: str
    revoked: bool


class IngestOut(Out):
    """The `ingest --json` item."""

    video_id: str
    sha256: str
    status: str
    duplicate: bool
    filename: str


class JobOut(Out):
    """The `jobs --json` item."""

    video_id: str
    status: str
    stage: str
    attempts: int
    error: str | None
    progress: float
    case: str
    filename: str
    updated_at: str
    notice: str | None = Field(None, description=(
        "what the reader of a done video should know, e.g. that no face was found as the file"
        " shows the picture but some were with it turned"))


class RetryOut(Out):
    """Units queued again."""

    video_id: str
    units_queued: int


class ReprocessedVideo(Out):
    """A video queued again, its case, and how many of its units."""

    video_id: str
    case: str
    units: int


class ReprocessOut(Out):
    """The videos queued again for analysis with embeddings, and those whose units with a
    matched track were left (re-analysis would replace the tracks a decided match names), so
    that their other faces stay unsearchable."""

    videos: list[ReprocessedVideo]
    units_queued: int
    left_with_matches: list[ReprocessedVideo]
    templates_rebuilt: list[str]  # watchlist entries given templates again from their photos
    templates_not_rebuilt: list[str]  # entries whose photos no longer yield the face


class EnrolOut(Out):
    """An enrolled subject and the pending matches it made."""

    subject_id: str
    pending_matches: int
    notes: list[str] = []
    awaiting_approval: bool = Field(
        description="enrolled under enrolment approval: not matched until a supervisor "
                    "other than its author approves it")


class SubjectOut(Out):
    """The `subjects list --json` item."""

    subject_id: str
    case: str
    name: str
    faces: int = Field(description="its face templates for the models in use")
    approved: bool = Field(description="false: awaiting a supervisor's approval; not matched "
                                       "until then")


class RemovedOut(Out):
    """A subject taken off the watchlist."""

    subject_id: str
    removed: bool


class ApprovedOut(Out):
    """An approved enrolment and the pending matches it made."""

    subject_id: str
    pending_matches: int


class SearchOut(Out):
    """The `search --json` object (plus `note` when there is one)."""

    search_id: str
    results: list[dict[str, Any]]
    threshold: float
    model: str


class MatchOut(Out):
    """The `matches --json` item."""

    match_id: str
    status: str
    similarity: float


class ReviewIn(Body):
    """A reviewer's decision and why."""

    decision: Literal["confirm", "reject"]
    note: str = Field("", max_length=TEXT_MAX)


class ReviewOut(Out):
    """The match's status after the review."""

    match_id: str
    status: str


class ReopenIn(Body):
    """Why a decided match is reviewed again."""

    reason: str = Field("", max_length=TEXT_MAX)


class ReopenOut(Out):
    """The reopened match: pending, in its new review round."""

    match_id: str
    status: str
    round: int


class FaceBoxOut(Out):
    """One face of a photo: its `face` index (largest first) and box `[x, y, w, h]`."""

    index: int
    box: list[float]


class PhotoFacesOut(Out):
    """The faces found in a probe photo (nothing stored)."""

    photo_sha256: str
    width: int
    height: int
    faces: list[FaceBoxOut]


class CaseVideoOut(Out):
    """A video of a case as an investigator sees it."""

    video_id: str
    filename: str
    duration_s: float
    status: str
    tracks: int


class PersonOut(Out):
    """The `persons --json` item."""

    person_id: str


class MatchesExportIn(Body):
    """What matches to export."""

    format: Literal["jsonl", "csv"] = "jsonl"
    status: str | None = None
    case: Annotated[str | None, CASE] = None


class AuditExportIn(Body):
    """The audit rows to export (a time window)."""

    format: Literal["jsonl", "csv"] = "jsonl"
    from_: str | None = Field(None, alias="from")
    to: str | None = None


class ExportOut(Out):
    """An export made on the server: fetch it and its manifest by id."""

    export_id: str
    manifest: dict[str, Any]


class VerifyOut(Out):
    """The audit chain's verdict."""

    ok: bool
    count: int
    first_bad_id: int | None
    reason: str | None


class KeyOut(Out):
    """A key or token shown to an authorised caller (the access is audited)."""

    key: str | None = None
    token: str | None = None


class CheckLiveIn(Body):
    """An audit export's manifest to check against the live log."""

    manifest: dict[str, Any]


class CheckLiveOut(Out):
    """Null when the export's ends are in the live chain; else why not."""

    problem: str | None


class AuditRowOut(Out):
    """One audit row."""

    id: int
    at: str
    actor: str
    action: str
    details: dict[str, Any]


class UserIn(Body):
    """A new account."""

    name: str = Field(min_length=1, max_length=64)
    roles: list[str] = Field(min_length=1)


class UserCreatedOut(Out):
    """The new account and its API token (shown once)."""

    name: str
    roles: list[str]
    token: str


class UserOut(Out):
    """The `users list --json` item (never a token)."""

    name: str
    roles: list[str]
    disabled: bool
    cases: list[str]


class DisabledOut(Out):
    """A disabled account (its tokens are revoked)."""

    name: str
    disabled: bool


class AssignIn(Body):
    """The case to assign."""

    case: str = Field(min_length=1, max_length=200)


class AssignOut(Out):
    """An account assigned to a case, or no longer."""

    name: str
    case: str


class AssignedOut(AssignOut):
    """An account assigned to a case; `note` (only then): why the assignment limits nothing
    (a supervisor or admin sees every case)."""

    note: str | None = None


class ReasonIn(Body):
    """Why (recorded)."""

    reason: str = Field(min_length=1, max_length=TEXT_MAX)


class HoldOut(Out):
    """A case's legal hold state, and how many videos the case holds (0: none yet)."""

    case: str
    held: bool
    videos: int


class PolicyIn(Body):
    """A policy change and why."""

    reason: str = Field(min_length=1, max_length=TEXT_MAX)
    profile: str | None = None
    reviewers: int | None = None
    retention_days: int | None = None


class ThresholdsIn(Body):
    """A model's new default threshold and floor, and why."""

    default: float
    floor: float
    reason: str = Field("", max_length=TEXT_MAX)


class ThresholdsOut(Out):
    """A model's thresholds in force."""

    model: str
    default: float
    floor: float


class ThresholdsNowOut(Out):
    """A model's thresholds in force, its calibrated floor and the last recorded change."""

    model: str
    default: float | None
    floor: float | None
    calibrated_floor: float | None
    changed_by: str | None
    reason: str | None
    changed_at: str | None


class CaseOut(Out):
    """A case: the accounts assigned to it and its legal hold."""

    case: str
    users: list[str]
    held: bool
    held_by: str | None
    hold_reason: str | None
    held_at: str | None


class PurgeIn(Body):
    """Whether to only plan the purge."""

    dry_run: bool = False


class Health(Out):
    """Liveness."""

    status: str

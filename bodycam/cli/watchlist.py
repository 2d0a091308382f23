"""Watchlist commands through the server: subjects, search, matches, review, persons."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from bodycam.cli.base import (
    JsonFlag,
    app,
    client_call,
    date_option,
    emit_json,
    err,
    export_to,
    fail,
    guarded,
    out,
    photos_or_server_refusal,
)

subjects_app = typer.Typer(no_args_is_help=True, help="The watchlist: enrol, list, remove.")
app.add_typer(subjects_app, name="subjects")


@subjects_app.command("enroll")
def subjects_enroll(
    name: Annotated[str, typer.Option("--name", help="the person's name")],
    photo: Annotated[list[str], typer.Option("--photo", help="a photo of the face (repeatable)")],
    case: Annotated[str | None, typer.Option("--case", help="case the entry is for (required)")
                    ] = None,
    reason: Annotated[str | None, typer.Option("--reason",
                                               help="why they are enrolled (required)")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="ISO date it lapses")] = None,
    face: Annotated[int | None, typer.Option("--face", help="face index, largest first")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Enrol a subject for a case; their photos are checked for one usable face."""
    if not case:
        fail("missing --case: a subject belongs to a case")
    if not reason:
        fail("missing --reason: say why this person is enrolled")
    date_option(expires, "--expires")
    fields = {"name": name, "case": case, "reason": reason, "expires": expires, "face": face}
    photos_or_server_refusal("/api/v1/subjects", fields, photo)
    res = client_call(lambda c: c.multipart("/api/v1/subjects", fields, photo))
    for n in res.get("notes", []):
        err.print(f"note: {n}")
    if as_json:
        emit_json(res)  # the API's object, its notes with it (bb33: a script missed them)
    elif res.get("awaiting_approval"):  # "0 pending matches" read as if none were found (bb33)
        out.print(f"subject {res['subject_id']} enrolled; awaiting a supervisor's approval "
                  "(`bodycam subjects approve`): not matched until then")
    else:
        out.print(f"subject {res['subject_id']} enrolled; {res['pending_matches']} pending "
                  "matches to review")


@subjects_app.command("list")
def subjects_list(
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Active subjects."""
    rows = client_call(lambda c: c.pages("/api/v1/subjects", case=case))
    if as_json:
        emit_json(rows)
        return
    for s in rows:
        waits = "" if s["approved"] else "  [awaiting approval]"
        out.print(f"{s['subject_id']}  case {s['case']}  {s['name']}  ({s['faces']} templates)"
                  f"{waits} by {s['created_by']}: {s['reason']}")


@subjects_app.command("remove")
def subjects_remove(subject_id: str) -> None:
    """Take a subject off the watchlist (their face templates are deleted)."""
    client_call(lambda c: c.delete(f"/api/v1/subjects/{quote(subject_id, safe='')}"))
    err.print(f"subject {subject_id} removed")


@subjects_app.command("approve")
def subjects_approve(subject_id: str) -> None:
    """Approve an enrolment (supervisor; where the policy requires approval)."""
    res = client_call(lambda c: c.post(f"/api/v1/subjects/{quote(subject_id, safe='')}/approve"))
    out.print(f"subject {subject_id} approved; {res['pending_matches']} pending matches to "
              "review")


@app.command("search")
def search_cmd(
    photo: Annotated[str | None, typer.Option("--photo", help="probe photo")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="enrolled subject id")] = None,
    track: Annotated[str | None, typer.Option("--track", help="start from a stored track")] = None,
    case: Annotated[str | None, typer.Option("--case", help="case the search is for (required)")
                    ] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="why (recorded; required)")
                       ] = None,
    threshold: Annotated[float | None, typer.Option(
        help="cosine similarity a lead needs: the model's default unless given, never below "
             "its floor (`thresholds list`)")] = None,
    limit: Annotated[int | None, typer.Option(help="most appearances returned")] = None,
    video: Annotated[str | None, typer.Option("--video", help="only this video")] = None,
    date_from: Annotated[str | None, typer.Option("--from", help="recorded on/after")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="recorded on/before")] = None,
    face: Annotated[int | None, typer.Option("--face", help="face index in --photo")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Where does this person appear? Ranked leads with similarity, threshold and model."""

    from bodycam import search_args as s

    if not case or not case.strip():
        fail("missing --case: every search is bound to a case")
    if not purpose or not purpose.strip():
        fail("missing --purpose: every search records why it was made")
    guarded(lambda: s.Probe(photo, face, subject, track))
    date_option(date_from, "--from")
    date_option(date_to, "--to")
    fields = {"case": case, "purpose": purpose, "subject": subject, "track": track,
              "threshold": threshold, "limit": limit, "video": video, "from": date_from,
              "to": date_to, "face": face}
    if photo is not None:
        photos_or_server_refusal("/api/v1/search", fields, [photo])
    result = client_call(lambda c: c.multipart("/api/v1/search", fields,
                                               [photo] if photo else []))
    note = result.pop("note", None)
    if note:
        err.print(f"note: {note}")
    if as_json:
        emit_json(result)
        return
    out.print(f"{len(result['results'])} appearances (threshold {result['threshold']}, model "
              f"{result['model']}); leads for human review, not identifications")
    for a in result["results"]:
        out.print(f"{a['similarity']:.3f}  quality {a['quality']:.2f}  {a['filename']}  "
                  f"{a['start_s']:7.2f}-{a['end_s']:7.2f}s  video {a['video_id']}  "
                  f"sha256 {a['sha256'][:12]}…")


matches_app = typer.Typer(help="Watchlist matches (leads): list, export and reopen.")
app.add_typer(matches_app, name="matches")


@matches_app.callback(invoke_without_command=True)
def matches_cmd(
    tctx: typer.Context,
    status_filter: Annotated[str | None, typer.Option(
        "--status", help="pending, confirmed, rejected, withdrawn, or decided (confirmed or"
        " rejected)")
    ] = None,
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Watchlist matches (leads) and their review state."""
    if tctx.invoked_subcommand is not None:
        return
    rows = client_call(lambda c: c.pages("/api/v1/matches", status=status_filter, case=case))
    if as_json:
        emit_json(rows)
        return
    for m in rows:
        out.print(f"{m['match_id']}  {m['status']:9} {m['similarity']:.3f}  {m['subject']}  "
                  f"video {m['video_id']} {m['start_s']:.1f}-{m['end_s']:.1f}s  reviewers "
                  f"{list(m['reviewers'])}")


@matches_app.command("export")
def matches_export(
    output: Annotated[str, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    status_filter: Annotated[str | None, typer.Option(
        "--status", help="pending, confirmed, rejected, withdrawn, or decided (confirmed or"
        " rejected)")
    ] = None,
    case: Annotated[str | None, typer.Option("--case")] = None,
) -> None:
    """Export matches and reviews with a manifest (rows, SHA-256, audit chain head)."""
    m = export_to("/api/v1/exports/matches", output, fmt,
                {"format": fmt, "status": status_filter, "case": case})
    err.print(f"wrote {m['rows']} matches to {output} (sha256 {m['sha256']}); "
              f"manifest {output}.manifest.json")


@app.command()
def review(
    match_id: str,
    confirm: Annotated[bool, typer.Option("--confirm")] = False,
    reject: Annotated[bool, typer.Option("--reject")] = False,
    note: Annotated[str | None, typer.Option("--note", help="why (recorded; required)")] = None,
) -> None:
    """Confirm or reject a match after looking at it; the reviewer is recorded."""
    if confirm == reject:
        fail("give exactly one of --confirm or --reject")
    body = {"decision": "confirm" if confirm else "reject", "note": note or ""}
    res = client_call(lambda c: c.post(f"/api/v1/matches/{quote(match_id, safe='')}/review",
                                       body))
    out.print(f"match {match_id}: {res['status']}")


@matches_app.command("reopen")
def matches_reopen(
    match_id: str,
    reason: Annotated[str | None, typer.Option("--reason", help="why (recorded; required)")
                      ] = None,
) -> None:
    """Put a decided match back to pending for a new review round (supervisor); the earlier
    reviews stay on record and no longer count."""
    res = client_call(lambda c: c.post(f"/api/v1/matches/{quote(match_id, safe='')}/reopen",
                                       {"reason": reason or ""}))
    out.print(f"match {match_id}: {res['status']} (review round {res['round']})")


@app.command("persons")
def persons_cmd(
    case: Annotated[str, typer.Option("--case")],
    purpose: Annotated[str | None, typer.Option("--purpose", help="why (recorded; required)")
                       ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Unknown persons in a case: tracks of the same face grouped across videos (audited,
    with the purpose)."""
    rows = client_call(lambda c: c.pages("/api/v1/persons", case=case, purpose=purpose))
    if as_json:
        emit_json(rows)
        return
    for p in rows:
        spans = ", ".join(f"{a['video_id'][:8]} {a['start_s']:.1f}-{a['end_s']:.1f}s"
                          for a in p["appearances"])
        out.print(f"{p['person_id']}  {len(p['track_ids'])} tracks: {spans}")

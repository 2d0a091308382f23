"""Governance commands through the server: users, cases, policy, thresholds, purge, fixity."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from bodycam.cli.base import (
    JsonFlag,
    app,
    client_call,
    emit_json,
    err,
    fail,
    out,
    plain,
    print_rows,
)
from bodycam.errors import BodycamError

users_app = typer.Typer(no_args_is_help=True, help="Accounts and roles (admin).")
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[list[str], typer.Option("--role", help="clerk, investigator, supervisor, "
                                                           "auditor or admin (repeatable)")],
) -> None:
    """Create an account; its API token is printed once and only its hash is stored."""
    res = client_call(lambda c: c.post("/api/v1/users", {"name": name, "roles": role}))
    err.print(f"user {name} created with roles {', '.join(sorted(set(role)))}; "
              "token (shown once, store it safely):")
    out.print(str(res["token"]))


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """Accounts, roles, state and assigned cases."""
    print_rows(client_call(lambda c: c.pages("/api/v1/users")), as_json, lambda r: (
        f"{r['name']:16} {'disabled' if r['disabled'] else 'active':8} "
        f"{', '.join(r['roles'])}  cases: {', '.join(r['cases']) or '-'}"))


@users_app.command("disable")
def users_disable(name: str) -> None:
    """Disable an account and revoke its tokens, for good: there is no enable (the bootstrap
    `operator` too, once named accounts exist; the last enabled admin is refused)."""
    client_call(lambda c: c.post(f"/api/v1/users/{quote(name, safe='')}/disable"))
    err.print(f"user {name} disabled")


@users_app.command("assign")
def users_assign(name: str, case: Annotated[str, typer.Option("--case")]) -> None:
    """Assign a case to an account (investigators see only their cases)."""
    done = client_call(lambda c: c.post(f"/api/v1/users/{quote(name, safe='')}/cases",
                                        {"case": case}))
    err.print(f"{name} assigned to case {done['case']}")  # as the server stored it
    if done.get("note"):
        err.print(done["note"])


@users_app.command("unassign")
def users_unassign(name: str, case: Annotated[str, typer.Option("--case")]) -> None:
    """Take a case from an account (it no longer sees the case's footage, tracks or leads)."""
    done = client_call(lambda c: c.delete(f"/api/v1/users/{quote(name, safe='')}/cases/"
                                          f"{quote(case, safe='')}"))
    err.print(f"{name} no longer sees case {done['case']}")


cases_app = typer.Typer(no_args_is_help=True,
                        help="Cases: their accounts and legal holds (supervisor, admin).")
app.add_typer(cases_app, name="cases")


@cases_app.command("list")
def cases_list(as_json: JsonFlag = False) -> None:
    """Every case assigned, held, or holding footage or watchlist entries: its accounts and
    its legal hold (who, why, since when)."""
    print_rows(client_call(lambda c: c.pages("/api/v1/cases")), as_json, lambda r: (
        f"{r['case']:16} accounts: {', '.join(r['users']) or '-'}  " + (
            f"held by {r['held_by']} since {r['held_at']}: {r['hold_reason']}"
            if r["held"] else "not held")))


@cases_app.command("hold")
def cases_hold(case: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Put a case on legal hold: its biometric data is kept past the retention period."""
    held = client_call(lambda c: c.post(f"/api/v1/cases/{quote(case, safe='')}/hold",
                                        {"reason": reason}))
    err.print(f"case {held['case']} on hold" + ("" if held["videos"] else
                                         ": it holds no footage yet (the hold covers what "
                                         "arrives; check the case number)"))


@cases_app.command("release")
def cases_release(case: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Lift a legal hold."""
    client_call(lambda c: c.post(f"/api/v1/cases/{quote(case, safe='')}/release",
                                 {"reason": reason}))
    err.print(f"case {case} released")


policy_app = typer.Typer(no_args_is_help=True, help="Policy profiles (show: any role; set: admin).")
app.add_typer(policy_app, name="policy")


def _print_policy(p: dict[str, object]) -> None:
    """The policy's fields, one per line (was a Python dict's repr: bb33)."""
    for key in ("profile", "reviewers_required", "retention_days", "enrolment_approval"):
        out.print(f"{key:20} {p.get(key)}")


@policy_app.command("show")
def policy_show(as_json: JsonFlag = False) -> None:
    """The policy in force."""
    current = client_call(lambda c: c.get("/api/v1/policy"))
    if as_json:
        emit_json(current)
    else:
        _print_policy(current)


@policy_app.command("set")
def policy_set(
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")],
    profile: Annotated[str | None, typer.Option(help="identify, identify-eu or redact-only")
                       ] = None,
    reviewers: Annotated[int | None, typer.Option(
        help="confirmations needed per match, 1-5 and not below the profile's own; kept across "
             "later profile switches")] = None,
    retention_days: Annotated[int | None, typer.Option(
        help="bystander data kept, days (1-36500)")] = None,
) -> None:
    """Change the policy profile or its parameters (admin, with a recorded reason)."""
    body = {"reason": reason, "profile": profile, "reviewers": reviewers,
            "retention_days": retention_days}
    new = client_call(lambda c: c.put("/api/v1/policy", body))
    err.print("policy changed; now in force:")
    _print_policy(new)
    if settled := new.get("settled_matches"):
        err.print(f"{len(settled)} pending match(es) confirmed: the confirmations already "
                  f"given meet the new count: {', '.join(settled)}")


thresholds_app = typer.Typer(no_args_is_help=True,
                             help="Match thresholds (list: any role; set: supervisor).")
app.add_typer(thresholds_app, name="thresholds")


@thresholds_app.command("list")
def thresholds_list(as_json: JsonFlag = False) -> None:
    """Each model's default threshold and floor in force, its calibrated floor, and the last
    recorded change (who, when, why)."""
    print_rows(client_call(lambda c: c.get("/api/v1/thresholds")), as_json, lambda r: (
        f"{r['model']:16} default {r['default']}  floor {r['floor']}  calibrated floor "
        f"{plain(r['calibrated_floor'])}  " + (
            f"changed by {r['changed_by']} at {r['changed_at']}: {r['reason']}"
            if r["changed_by"] else "configured values")))


@thresholds_app.command("set")
def thresholds_set(
    model: Annotated[str, typer.Option("--model")],
    default: Annotated[float, typer.Option("--default")],
    floor: Annotated[float, typer.Option("--floor")],
    reason: Annotated[str, typer.Option("--reason")],
) -> None:
    """Record a supervisor-approved change of a model's default threshold and floor."""
    import math

    from bodycam.search_args import check_similarity

    for value, flag in ((default, "--default"), (floor, "--floor")):
        if not math.isfinite(value):  # JSON cannot carry it: the server's line, said here
            try:
                check_similarity(value, flag)
            except BodycamError as exc:
                fail(str(exc))
    client_call(lambda c: c.put(f"/api/v1/thresholds/{quote(model, safe='')}",
                                {"default": default, "floor": floor, "reason": reason}))
    out.print(f"{model}: default {default}, floor {floor}")


@app.command()
def purge(dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Remove expired bystander embeddings and crops, and lapsed watchlist entries' templates
    (originals are never touched)."""
    plan = client_call(lambda c: c.post("/api/v1/purge", {"dry_run": dry_run}))
    verb = "would purge" if dry_run else "purged"
    out.print(f"{verb} {plan['tracks']} tracks, {plan['detections']} detection embeddings, "
              f"{plan['thumbnails']} thumbnails (older than {plan['retention_days']} days), "
              f"{plan['subjects']} lapsed watchlist entries ({plan['subject_templates']} "
              f"templates)")


@app.command()
def reprocess(
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")],
) -> None:
    """Analyse again every done video stored while the redact-only profile was in force (its
    faces were tracked without embeddings), so that searches find them (admin)."""
    res = client_call(lambda c: c.post("/api/v1/reprocess", {"reason": reason}))
    for v in res["videos"]:
        out.print(f"{v['video_id']}  case {v['case']}  {v['units']} units queued")
    out.print(f"{len(res['videos'])} videos, {res['units_queued']} units queued")
    if res["templates_rebuilt"]:
        out.print(f"{len(res['templates_rebuilt'])} watchlist entries enrolled again from "
                  "their photos")
    for sid in res["templates_not_rebuilt"]:
        out.print(f"subject {sid}: its photos are gone or no longer yield its face: enrol it"
                  " again")
    for v in res["left_with_matches"]:
        out.print(f"left: {v['video_id']}  case {v['case']}  {v['units']} units hold a "
                  "matched track (re-analysis would replace it): their other faces stay "
                  "unsearchable")


@app.command()
def fixity(as_json: JsonFlag = False) -> None:
    """Re-hash every stored original, enrolment photo and derivative against its recorded
    SHA-256 now; each mismatch is audited. Exit 1 when any object changed or is missing."""
    report = client_call(lambda c: c.post("/api/v1/fixity"))
    if as_json:
        emit_json(report)
    else:
        for m in report["mismatched"]:
            found = m["actual_sha256"] or "missing"
            of = (f"subject {m['subject_id']}" if m.get("subject_id")
                  else f"video {m['video_id']}")
            out.print(f"MISMATCH {m['kind']} {m['key']} ({of}): recorded "
                      f"{m['expected_sha256']}, stored {found}")
        out.print(f"fixity {'ok' if report['ok'] else 'FAILED'}: {report['originals']} "
                  f"originals, {report.get('photos', 0)} enrolment photos, "
                  f"{report['derivatives']} derivatives, "
                  f"{len(report['mismatched'])} mismatches")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("events-token")
def events_token_cmd() -> None:
    """Print the bearer token the S3 notifier must send to POST /s3/events (admin)."""
    res = client_call(lambda c: c.get("/api/v1/events-token"))
    out.print(str(res["token"]))

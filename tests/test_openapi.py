"""The published OpenAPI schema is valid and declares bearer security and problem responses."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate

PUBLIC = {("post", "/api/v1/auth/login"), ("get", "/healthz"), ("get", "/"),
          ("post", "/s3/events")}  # the notifier's own token, not an account's
METHODS = ("get", "post", "put", "delete", "patch")


def _schema(api_url: str) -> dict[str, object]:
    r = httpx.get(api_url + "/openapi.json", timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_openapi_document_validates_and_has_the_contract_paths(api_url: str) -> None:
    spec = _schema(api_url)
    validate(spec)  # type: ignore[arg-type]
    paths = spec["paths"]
    assert isinstance(paths, dict)
    for part in ("/api/v1/videos", "/api/v1/search", "/api/v1/subjects", "/api/v1/matches",
                 "/api/v1/audit"):
        assert part in paths, f"no {part} in /openapi.json"
    # Breaking it: a schema missing its paths does not validate as the contract.
    broken = {k: v for k, v in spec.items() if k != "openapi"}
    try:
        validate(broken)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any validation error will do
        pass
    else:
        raise AssertionError("a schema without `openapi` was accepted")


def test_every_non_public_operation_declares_bearer_security_and_a_problem_response(
        api_url: str) -> None:
    spec = _schema(api_url)
    schemes = spec.get("components", {}).get("securitySchemes", {})  # type: ignore[attr-defined]
    bearer = {name for name, s in schemes.items()
              if s.get("type") == "http" and s.get("scheme", "").lower() == "bearer"}
    assert bearer, f"no bearer security scheme: {schemes}"
    top = {k for req in spec.get("security", []) for k in req}  # type: ignore[attr-defined]
    missing_security: list[str] = []
    missing_problem: list[str] = []
    for path, ops in spec["paths"].items():  # type: ignore[attr-defined]
        for method, op in ops.items():
            if method not in METHODS or (method, path) in PUBLIC:
                continue
            declared = {k for req in op.get("security", []) for k in req} or top
            if not declared & bearer:
                missing_security.append(f"{method.upper()} {path}")
            problems = [code for code, resp in op.get("responses", {}).items()
                        if code.startswith(("4", "5"))
                        and "application/problem+json" in resp.get("content", {})]
            if not problems:
                missing_problem.append(f"{method.upper()} {path}")
    assert not missing_security, f"operations without bearer security: {missing_security}"
    assert not missing_problem, f"operations without a problem+json response: {missing_problem}"

"""web/staticwebapp.config.json: what the sample's Static Web App enforces (checked as data; the SWA CLI reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parent.parent / "web" / "staticwebapp.config.json"


def config() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CONFIG.read_text(encoding="utf-8"))
    return data


def test_the_page_is_behind_sign_in_and_api_is_forwarded_for_the_function_to_answer() -> None:
    routes = {r["route"]: r for r in config()["routes"]}
    assert routes["/"]["allowedRoles"] == ["authenticated"]
    assert routes["/index.html"]["allowedRoles"] == ["authenticated"]
    # /api/* reaches the linked backend for everyone: a signed-out caller gets the function's own 401 message.
    assert set(routes["/api/*"]["allowedRoles"]) == {"anonymous", "authenticated"}
    assert config()["responseOverrides"]["401"]["redirect"].startswith("/.auth/login/aad")


def test_the_navigation_fallback_leaves_api_auth_and_files_alone() -> None:
    fallback = config()["navigationFallback"]
    assert fallback["rewrite"] == "/index.html"
    assert {"/api/*", "/.auth/*"} <= set(fallback["exclude"])


def test_the_content_security_policy_allows_only_this_origin_and_power_bi() -> None:
    policy = dict(
        (part.split()[0], part.split()[1:]) for part in config()["globalHeaders"]["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]  # the function, behind /api on the site's own origin
    assert all("powerbi" in host for host in policy["frame-src"])
    assert policy["frame-ancestors"] == ["'none'"]
    assert config()["globalHeaders"]["X-Content-Type-Options"] == "nosniff"

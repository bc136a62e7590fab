"""Static Web Apps: web/staticwebapp.config.json (as data), and the sample behind the SWA CLI in Chromium with its
emulated sign-in, row-level security taken from the principal it forwards."""

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


# -- the sample behind the SWA CLI, in Chromium ---------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

import function_app  # noqa: E402
from emulator import RLS_DATASET_ID, RLS_REPORT_ID, FakeUpstream  # noqa: E402
from emulator.entra import emulator_session  # noqa: E402
from emulator.host import FunctionRoutes, LocalHost  # noqa: E402
from tests.browser import SKIP_WITHOUT_CHROMIUM, WEB, browser_fixture, page_fixture, sent  # noqa: E402, F401

SWA = WEB / "node_modules" / ".bin" / "swa"
JQUERY = WEB / "node_modules" / "jquery" / "dist" / "jquery.min.js"
SWA_SCREENSHOT = Path(tempfile.gettempdir()) / "powerbi-embed-swa.png"  # looked at by hand; not committed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def swa(fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The function (RLS from the SWA principal) on a local host, and the SWA CLI serving web/ in front of it."""
    if not SWA.exists():
        pytest.fail(f"{SWA} is missing: run `npm ci --ignore-scripts` in web/ (make setup and .ci/run do it)")
    profile = {
        **env,
        "POWERBI_HTTP_AUTH_LEVEL": "anonymous",
        "POWERBI_RLS_USERNAME_SOURCE": "principal",
        "POWERBI_RLS_ROLES_SOURCE": "principal",
        "POWERBI_RLS_ALLOWED_ROLES": "Region,Manager",
        "WEBSITE_AUTH_ENABLED": "true",  # stands in for the function app's own authentication (local only)
    }
    for name, value in profile.items():
        monkeypatch.setenv(name, value)
    function_app.use_service(None)
    function_app.use_session(emulator_session(fake.base_url))
    port = free_port()
    with LocalHost(FunctionRoutes(function_app.app)) as host:
        cli = subprocess.Popen(  # noqa: S603 - the pinned CLI, fixed arguments
            [str(SWA), "start", str(WEB), "--api-devserver-url", host.url, "--port", str(port), "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:  # polling a child process's start-up, not a sleep in a test's logic
                try:
                    with urllib.request.urlopen(f"{url}/embed.js", timeout=2):  # noqa: S310 - our own URL
                        break
                except OSError:
                    if time.monotonic() > deadline or cli.poll() is not None:
                        pytest.fail("the SWA CLI did not start")
                    time.sleep(0.2)
            yield url
        finally:
            os.killpg(cli.pid, signal.SIGTERM)  # the CLI's own server is a child in its process group
            cli.wait(timeout=10)
    function_app.use_service(None)
    function_app.use_session(None)


@SKIP_WITHOUT_CHROMIUM
def test_a_user_signed_in_through_the_swa_cli_gets_a_token_with_their_identity_and_role(
    page: Any, swa: str, fake: FakeUpstream
) -> None:
    # The CLI's sign-in page loads jQuery from Microsoft's CDN: serve npm's copy (the same 3.2.1) for that host.
    # It asks with crossorigin="anonymous": the answer must allow CORS. Bootstrap's files are left empty.
    cors = {"Access-Control-Allow-Origin": "*"}
    page.route("https://ajax.aspnetcdn.com/**", lambda r: r.fulfill(body="", headers=cors))
    page.route("https://ajax.aspnetcdn.com/**/jquery-*.js", lambda r: r.fulfill(path=str(JQUERY), headers=cors))

    # Signed out: the function itself answers 401 through the site's /api.
    signed_out = page.request.get(f"{swa}/api/embed/reports/{RLS_REPORT_ID}")
    assert signed_out.status == 401
    assert (
        signed_out.json()["error"]["message"] == "Sign in first: this function issues tokens only to signed-in users."
    )

    # Signed out, the page itself is behind sign-in (staticwebapp.config.json): sent to the login.
    to_login = page.request.get(f"{swa}/", max_redirects=0)
    assert to_login.status == 302
    assert to_login.headers["location"].startswith("/.auth/login/aad")

    page.goto(f"{swa}/.auth/login/aad")
    page.type("#userDetails", "ana@contoso.com")
    page.fill("#userRoles", "")  # it holds the default roles; typing (keyup) is what saves the field
    page.type("#userRoles", "Region")
    page.click("#submit")
    page.wait_for_load_state()

    with page.expect_response(lambda r: "/api/embed/" in r.url) as answer:
        page.goto(f"{swa}/?api=/api&id={RLS_REPORT_ID}")
    assert answer.value.status == 200, answer.value.text()
    frame = page.frames[-1]
    page.wait_for_function("document.getElementById('status').textContent.includes('loaded')")
    token = answer.value.json()["accessToken"]
    issued = fake.embed_tokens[token]
    assert list(issued.identities) == [
        {"username": "ana@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}
    ]
    assert sent(frame, "/report/load")[0]["body"]["accessToken"] == token
    page.wait_for_function("document.getElementById('user').textContent.includes('ana@contoso.com')")
    page.screenshot(path=str(SWA_SCREENSHOT))

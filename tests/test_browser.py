"""The web sample end to end in headless Chromium: page -> function (local host, real HTTP, CORS) -> emulator.

Debian's Chromium (/usr/bin/chromium) is driven by Playwright from pip, with no browser download. The page is
served from its own origin, so every call to the function is cross-origin, and it sends a function key in a
header, so each one is preflighted. ``https://app.powerbi.com/**`` is routed to ``FAKE_EMBED``, a fake embed
page that speaks powerbi-client's postMessage protocol (documented there) and records what the SDK sent it.

Skipped only when Playwright or /usr/bin/chromium is missing. web/node_modules must be installed beforehand
(``npm ci`` in web/: ``make setup`` and .ci/run do it); the test fails, naming the command, when it is not.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import function_app
from emulator import REPORT_ID, FakeUpstream
from emulator.entra import emulator_session
from emulator.host import Cors, FunctionRoutes, LocalHost

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: install Debian's chromium (apt-get install chromium)"
)

WEB = Path(__file__).resolve().parent.parent / "web"
SDK = WEB / "node_modules" / "powerbi-client" / "dist" / "powerbi.min.js"
# Flags that let Chromium run as root in a container on a closed network without reaching for Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "browser-test-key"
SCREENSHOT = Path(tempfile.gettempdir()) / "powerbi-embed-sample.png"  # looked at by hand; not committed

# The fake embed page. What powerbi-client 2.24.1 (dist/powerbi.js, with window-post-message-proxy,
# http-post-message and powerbi-router bundled) exchanges with the embed iframe:
#
# * Requests from the SDK arrive as postMessage data {method, url, headers, body}. headers.id is the request's
#   tracking id; headers.uid is the embed's unique id, which the SDK also appends to the iframe's src as &uid=.
#   - When the iframe fires its DOM "load" event, the SDK posts POST /report/load (/dashboard/load for a
#     dashboard) whose body is the whole embed configuration: type, id, embedUrl, accessToken, tokenType
#     (1 = Embed), groupId, uniqueId, settings.
#   - report.setAccessToken(token) posts POST /report/token (/dashboard/token) whose body is the token string.
#   - report.reload() posts /report/load again, with the configuration's current (set) token.
# * The iframe answers a request by posting {statusCode, headers: {id: <the request's id>}, body}; a statusCode
#   outside 2xx rejects the SDK's promise. Power BI answers load and token with 202.
# * Events go the other way as requests: POST /reports/{uid}/events/{name} (/dashboards/... for a dashboard)
#   with the event's detail as body; the SDK raises it as a DOM event on the embed container, which is what
#   report.on("loaded" | "rendered" | "error", ...) listens to. The SDK's router answers them; those answers
#   (no method) are ignored here. An error's detail is powerbi-models' IError: {message, detailedMessage,
#   errorCode, level}; an expired token has message "TokenExpired" (models.CommonErrorCodes.TokenExpired).
FAKE_EMBED = """<!doctype html>
<html><head><meta charset="utf-8"><title>Fake Power BI embed</title>
<style>body{font:15px system-ui,sans-serif;margin:24px;color:#333}h2{color:#b07a00}</style></head>
<body><h2>Fake Power BI embed (test)</h2><p id="summary">Waiting for the SDK…</p>
<script>
window.received = [];
let uid = new URLSearchParams(location.search).get("uid");
const events = location.pathname === "/dashboardEmbed" ? "dashboards" : "reports";
const reply = (request, statusCode, body) =>
  parent.postMessage({statusCode, headers: {id: request.headers.id}, body}, "*");
const raise = (name, body) =>
  parent.postMessage({method: "POST", url: `/${events}/${uid}/events/${name}`, headers: {}, body}, "*");
window.raiseTokenExpired = () => raise("error", {
  message: "TokenExpired", detailedMessage: "Access token has expired, resubmit with a new access token",
  errorCode: "403", level: 6});
addEventListener("message", (event) => {
  const m = event.data;
  if (!m || typeof m !== "object" || !m.method || !m.url) return;
  window.received.push({method: m.method, url: m.url, headers: m.headers, body: m.body});
  if (/^\\/(report|dashboard)\\/load$/.test(m.url)) {
    uid = m.headers.uid || uid;
    reply(m, 202, null);
    raise("loaded");
    raise("rendered");
  } else if (/^\\/(report|dashboard)\\/token$/.test(m.url)) {
    reply(m, 202, null);
  } else {
    reply(m, 404, {message: "NotSupported", detailedMessage: "The fake embed page does not do " + m.url});
  }
  const count = (url) => window.received.filter((r) => r.url.endsWith(url)).length;
  document.getElementById("summary").textContent =
    `${m.body && m.body.type || "item"} ${m.body && m.body.id || ""} — loads: ${count("/load")}, ` +
    `token updates: ${count("/token")}`;
});
</script></body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """web/ served as a static site from its own origin (the page and powerbi-client from node_modules)."""
    if not SDK.exists():
        pytest.fail(f"{SDK} is missing: run `npm ci` in web/ (make setup does, and so does .ci/run)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(WEB)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(fake: FakeUpstream, env: dict[str, str], web: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app over real HTTP, configured like a deployment (settings in the environment, function keys, CORS)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    function_app.use_service(None)  # built from the environment by the first request
    function_app.use_session(emulator_session(fake.base_url))  # as the local host does for the emulator
    with LocalHost(FunctionRoutes(function_app.app, keys={KEY}), cors=Cors((web,))) as host:
        yield f"{host.url}/api"
    function_app.use_service(None)
    function_app.use_session(None)


@pytest.fixture
def short_tokens(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every token request get a newly issued embed token that lives 8 seconds.

    The function hands out a cached embed token while at least POWERBI_MIN_TOKEN_MINUTES (whole minutes, so
    at least 1 for a short test) remain, and an embed token never outlives the Entra token that requested it.
    With Entra tokens of 8 s from the emulator and a minimum of 1 minute, every embed token is born below the
    minimum, so the function never reuses one: each page refresh gets a new token, issued by the emulator.
    (A minimum of 0 would not do: the function would hand back the same token until it expired.) The page
    then refreshes when 0.1 minute (6 s) or less remains, about 2 s after loading.
    """
    monkeypatch.setattr(fake, "access_token_lifetime", 8)
    monkeypatch.setenv("POWERBI_MIN_TOKEN_MINUTES", "1")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 640})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.route("https://app.powerbi.com/**", lambda route: route.fulfill(content_type="text/html", body=FAKE_EMBED))
    yield page
    context.close()


def open_page(page: Any, web: str, api: str, **params: str) -> tuple[Any, dict[str, Any]]:
    """Open the sample; returns the fake embed frame and the function's answer that the page got."""
    query = urlencode({"api": api, "key": KEY, "id": REPORT_ID, **params})
    with (
        page.expect_response(lambda r: "/api/embed/" in r.url and r.request.method == "GET") as answer,
        page.expect_event("framenavigated", lambda f: f.url.startswith("https://app.powerbi.com/")) as frame,
    ):
        page.goto(f"{web}/?{query}")
    assert answer.value.status == 200, answer.value.text()
    assert answer.value.headers["access-control-allow-origin"] == web
    page.wait_for_function("document.getElementById('status').textContent.includes('loaded')")
    return frame.value, answer.value.json()


def sent(frame: Any, url: str) -> list[dict[str, Any]]:
    """What the SDK posted to the embed frame at ``url``."""
    return [m for m in frame.evaluate("window.received") if m["url"] == url]


def test_the_page_embeds_what_the_function_issued(page: Any, web: str, api: str, fake: FakeUpstream) -> None:
    frame, answer = open_page(page, web, api)

    [load] = sent(frame, "/report/load")
    issued = fake.embed_tokens[answer["accessToken"]]  # issued by the emulator's GenerateToken
    assert issued.token_id == answer["tokenId"]
    assert load["body"]["accessToken"] == answer["accessToken"]
    assert load["body"]["embedUrl"] == answer["embedUrl"]
    assert (load["body"]["type"], load["body"]["id"], load["body"]["tokenType"]) == ("report", REPORT_ID, 1)
    assert frame.url == f"{answer['embedUrl']}&uid={load['headers']['uid']}"  # the iframe's src
    status = page.inner_text("#status")
    assert status.startswith("The report loaded. Its token expires at")  # the page's "loaded" handler ran
    assert page.is_hidden("#error")
    assert sent(frame, "/report/token") == []  # a fresh token is not refreshed
    page.screenshot(path=str(SCREENSHOT))


@pytest.mark.usefixtures("short_tokens")
def test_the_page_refreshes_the_token_before_it_expires(page: Any, web: str, api: str, fake: FakeUpstream) -> None:
    answers: list[dict[str, Any]] = []
    page.on("response", lambda r: answers.append(r.json()) if "/api/embed/" in r.url and r.ok else None)
    frame, first = open_page(page, web, api, refreshMinutes="0.1", checkSeconds="0.5")

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")  # about 2 s

    new_token = sent(frame, "/report/token")[0]["body"]
    assert new_token != first["accessToken"]
    assert fake.embed_tokens[new_token].token_id != fake.embed_tokens[first["accessToken"]].token_id
    assert new_token in [a["accessToken"] for a in answers[1:]]  # the function's answer to the page's refresh
    assert len(sent(frame, "/report/load")) == 1  # set in place, not reloaded
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Token refreshed at')")


@pytest.mark.usefixtures("short_tokens")
def test_the_page_checks_the_token_when_its_tab_regains_focus(page: Any, web: str, api: str) -> None:
    # Every 8-second token is due for refresh (1 minute or less left), but the timer would wait an hour.
    frame, first = open_page(page, web, api, refreshMinutes="1", checkSeconds="3600")
    assert sent(frame, "/report/token") == []

    page.evaluate("window.dispatchEvent(new Event('focus'))")

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    assert sent(frame, "/report/token")[0]["body"] != first["accessToken"]


@pytest.mark.usefixtures("short_tokens")
def test_a_token_expired_error_reloads_the_report_with_a_new_token(page: Any, web: str, api: str) -> None:
    frame, first = open_page(page, web, api, refreshMinutes="0", checkSeconds="3600")

    frame.evaluate("raiseTokenExpired()")

    page.wait_for_timeout(3000)
    print(frame.evaluate("window.received.map(m => m.url)"), page.inner_text("#status"), page.inner_text("#error"))
    frame.wait_for_function("window.received.filter((m) => m.url === '/report/load').length === 2")
    received = [m["url"] for m in frame.evaluate("window.received")]
    assert received == ["/report/load", "/report/token", "/report/load"]
    [token] = sent(frame, "/report/token")
    reload = sent(frame, "/report/load")[1]
    assert token["body"] != first["accessToken"]
    assert reload["body"]["accessToken"] == token["body"]
    assert page.is_hidden("#error")  # recovered: nothing for the reader to do


@pytest.mark.parametrize(
    ("report_id", "status"),
    [("not-a-guid", 400), ("0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d", 404)],  # refused by the function; by Power BI
)
def test_an_error_from_the_function_is_shown_in_plain_words(
    page: Any, web: str, api: str, report_id: str, status: int
) -> None:
    query = urlencode({"api": api, "key": KEY, "id": report_id})
    with page.expect_response(lambda r: "/api/embed/" in r.url and r.request.method == "GET") as answer:
        page.goto(f"{web}/?{query}")

    assert answer.value.status == status
    message = answer.value.json()["error"]["message"]
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error") == message
    assert page.inner_text("#status") == "No report embedded."
    assert page.query_selector("iframe") is None


def test_a_page_origin_missing_from_cors_is_told_what_to_check(page: Any, web: str, api: str) -> None:
    with LocalHost(FunctionRoutes(function_app.app, keys={KEY}), cors=Cors(("http://elsewhere.example",))) as host:
        page.goto(f"{web}/?{urlencode({'api': f'{host.url}/api', 'key': KEY, 'id': REPORT_ID})}")
        page.wait_for_selector("#error", state="visible")

    assert page.inner_text("#error") == (
        f"Could not reach the embed-token function at {host.url}/api. "
        "Is it running, and does it allow this page's origin (Host.CORS)?"
    )

"""Browser fixtures shared by the Chromium tests: Playwright on Debian's Chromium, web/ served as a static site,
the function over real HTTP with CORS and function keys, and a fake Power BI embed page.

Debian's Chromium (/usr/bin/chromium) is driven by Playwright from pip, with no browser download. Test modules
import these fixtures (``from tests.browser import api_fixture, ...``; each is known to pytest by its name
without ``_fixture``) and skip themselves with ``pytestmark = SKIP_WITHOUT_CHROMIUM``.
``https://app.powerbi.com/**`` is routed to ``FAKE_EMBED``, a fake embed page that speaks powerbi-client's
postMessage protocol (documented there) and records what the SDK sent it.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import function_app
from emulator import FakeUpstream
from emulator.entra import emulator_session
from emulator.host import Cors, FunctionRoutes, LocalHost

try:
    from playwright import sync_api
except ImportError:  # requirements-dev.txt has it; without it the browser tests skip themselves
    sync_api = None
CHROMIUM = Path("/usr/bin/chromium")
SKIP_WITHOUT_CHROMIUM = pytest.mark.skipif(
    sync_api is None or not CHROMIUM.exists(),
    reason="needs Playwright (pip install playwright) and /usr/bin/chromium (apt-get install chromium)",
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
#   - report.setAccessToken(token) posts POST /report/token (/dashboard/token) whose body is the token string
#     (a test may hold the page's answers to these: holdTokens, releaseTokens()).
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
// A test may hold Power BI's answers to token updates (holdTokens = true) and let them go later.
window.holdTokens = false;
window.heldTokens = [];
window.releaseTokens = () => {
  window.holdTokens = false;
  window.heldTokens.splice(0).forEach((m) => reply(m, 202, null));
};
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
    if (window.holdTokens) window.heldTokens.push(m); else reply(m, 202, null);
  } else {
    reply(m, 404, {message: "NotSupported", detailedMessage: "The fake embed page does not do " + m.url});
  }
  const count = (url) => window.received.filter((r) => r.url.endsWith(url)).length;
  document.getElementById("summary").textContent =
    `${m.body && m.body.type || "item"} ${m.body && m.body.id || ""} — loads: ${count("/load")}, ` +
    `token updates: ${count("/token")}`;
});
</script></body></html>"""


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(name="web", scope="module")
def web_fixture() -> Iterator[str]:
    """web/ served as a static site from its own origin (the page and powerbi-client from node_modules)."""
    if not SDK.exists():
        pytest.fail(f"{SDK} is missing: run `npm ci` in web/ (make setup does, and so does .ci/run)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(WEB)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(name="api")
def api_fixture(fake: FakeUpstream, env: dict[str, str], web: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app over real HTTP, configured like a deployment (settings in the environment, function keys, CORS)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    function_app.use_service(None)  # built from the environment by the first request
    function_app.use_session(emulator_session(fake.base_url))  # as the local host does for the emulator
    with LocalHost(FunctionRoutes(function_app.app, keys={KEY}), cors=Cors((web,))) as host:
        yield f"{host.url}/api"
    function_app.use_service(None)
    function_app.use_session(None)


@pytest.fixture(name="short_tokens")
def short_tokens_fixture(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
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


@pytest.fixture(name="page")
def page_fixture(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 640})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.route("https://app.powerbi.com/**", lambda route: route.fulfill(content_type="text/html", body=FAKE_EMBED))
    yield page
    context.close()


def sent(frame: Any, url: str) -> list[dict[str, Any]]:
    """What the SDK posted to the embed frame at ``url``."""
    return [m for m in frame.evaluate("window.received") if m["url"] == url]

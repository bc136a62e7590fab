"""The local host's CLI (``python -m emulator.host``) as a newcomer runs it, and its CORS policy.

The CLI runs as a real process on a free port: settings files, the emulator profile, host.json's
routePrefix, route templates and methods, Ctrl-C. CORS is checked in-process over real HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from emulator import CLIENT_ID, CLIENT_SECRET, PASSWORD, REPORT_ID, TENANT_ID, USERNAME, WORKSPACE_ID, FakeUpstream
from emulator.host import PROFILE, Cors, FunctionRoutes, LocalHost, LocalSettings, find_app

ROOT = Path(__file__).resolve().parent.parent
PAGE = "http://127.0.0.1:8080"

# A small app with the route shapes the host must honour; written to a folder of its own for the CLI.
TINY_APP = """
import json
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
calls = []


@app.route(route="items/{id:int}", methods=["POST"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    calls.append(req.method)
    answer = {"id": req.route_params["id"], "body": req.get_body().decode()}
    return func.HttpResponse(json.dumps(answer), mimetype="application/json")


@app.route(route="files/{*rest}", methods=["GET"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    calls.append(req.method)
    return func.HttpResponse(json.dumps({"rest": req.route_params["rest"]}), mimetype="application/json")
"""


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "function_app.py").write_text(TINY_APP, encoding="utf-8")
    return app_dir


@pytest.fixture
def tiny(tiny_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tiny_function_app", tiny_dir / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings under test, so that they come from the files."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POWERBI_") and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
    }
    return {**kept, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


@contextmanager
def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """``python -m emulator.host --port 0 ARGS``: yields its URL and output lines; Ctrl-C (SIGINT) at the end."""
    with subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "emulator.host", "--port", "0", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 30
        try:
            while True:  # a bounded wait on a real process starting
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if line is None:
                    raise AssertionError("the host exited:\n" + "\n".join(seen))
                seen.append(line)
                if match := re.match(r"Listening on (http://\S+)\. Ctrl-C to stop\.$", line):
                    break
            yield match.group(1), seen
        finally:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            reader.join(timeout=5)
        assert code == 0, "Ctrl-C must stop the host cleanly"
        while (line := lines.get(timeout=5)) is not None:
            seen.append(line)
        assert seen[-1] == "Stopped."


def settings_file(path: Path, values: dict[str, str], host: dict[str, Any] | None = None) -> Path:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values, "Host": host or {}}), encoding="utf-8")
    return path


def test_help_says_it_stands_in_for_core_tools() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulator.host", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )

    text = " ".join(result.stdout.split())
    assert "stand-in for machines without Azure Functions Core Tools" in text
    assert "never replaces `func start`" in text


def test_serves_a_token_with_local_settings_and_cors(fake: FakeUpstream, env: dict[str, str], tmp_path: Path) -> None:
    ca = os.environ["REQUESTS_CA_BUNDLE"]  # the fake's CA, written by the fixture
    settings = settings_file(
        tmp_path / "local.settings.json",
        {**env, "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca},
        {"CORS": f"{PAGE},http://localhost:8080", "CORSCredentials": False},
    )

    with cli("--settings", str(settings)) as (url, output):
        answer = requests.get(f"{url}/api/embed/reports/{REPORT_ID}", headers={"Origin": PAGE}, timeout=30)
        foreign = requests.get(f"{url}/api/health", headers={"Origin": "http://elsewhere.example"}, timeout=10)

    assert f"        embed_report: [GET] {url}/api/embed/reports/{{reportId}}" in output
    assert answer.status_code == 200, answer.text
    assert answer.json()["accessToken"] in fake.embed_tokens
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert fake.token_calls[0].form["username"] == USERNAME  # the settings file's values reached Entra
    assert foreign.status_code == 200
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_the_environment_wins_over_local_settings_as_with_core_tools(env: dict[str, str], tmp_path: Path) -> None:
    settings = settings_file(tmp_path / "local.settings.json", {**env, "POWERBI_AUTH_MODE": "MasterUser"})

    with cli("--settings", str(settings), env=clean_env(POWERBI_AUTH_MODE="ServicePrincipal")) as (url, output):
        health = requests.get(f"{url}/api/health", timeout=10)

    skip = "Skipping 'POWERBI_AUTH_MODE' from local settings as it's already defined in current environment variables."
    assert skip in output
    assert health.json() == {"status": "ok", "authMode": "ServicePrincipal", "clientType": "confidential"}


def test_without_local_settings_the_emulator_profile_is_used_and_wins(tmp_path: Path) -> None:
    # The profile must override what the shell has set: this machine presets REQUESTS_CA_BUNDLE, for one.
    env = clean_env(POWERBI_AUTH_MODE="ServicePrincipal", REQUESTS_CA_BUNDLE="/nonexistent/ca.pem")

    with cli(env=env) as (url, output):
        health = requests.get(f"{url}/api/health", headers={"Origin": PAGE}, timeout=10)
        preflight = requests.options(
            f"{url}/api/health", headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"}, timeout=10
        )

    assert output[0] == f"No local.settings.json here: using the emulator profile {PROFILE}."
    assert health.json() == {"status": "ok", "authMode": "MasterUser", "clientType": "confidential"}
    assert health.headers["Access-Control-Allow-Origin"] == PAGE
    assert preflight.status_code == 204


def test_the_profile_points_at_the_emulators_defaults() -> None:
    profile = LocalSettings.load(PROFILE)
    values = profile.values

    assert (values["POWERBI_TENANT_ID"], values["POWERBI_CLIENT_ID"]) == (TENANT_ID, CLIENT_ID)
    assert (values["POWERBI_CLIENT_SECRET"], values["POWERBI_USERNAME"]) == (CLIENT_SECRET, USERNAME)
    assert (values["POWERBI_PASSWORD"], values["POWERBI_WORKSPACE_ID"]) == (PASSWORD, WORKSPACE_ID)
    # scripts/demo.py starts the emulator on 8443 with its CA here, and the page on 8080.
    assert values["POWERBI_AUTHORITY_HOST"] == values["POWERBI_API_URL"] == "https://localhost:8443"
    assert values["REQUESTS_CA_BUNDLE"] == values["SSL_CERT_FILE"] == ".emulator/ca.pem"
    assert (profile.port, profile.cors) == (7071, "http://127.0.0.1:8080,http://localhost:8080")


def test_route_prefix_templates_and_methods_from_the_app_folder(tiny_dir: Path) -> None:
    (tiny_dir / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))

    with cli("--settings", str(settings_file(tiny_dir / "local.settings.json", {})), cwd=tiny_dir) as (url, _):
        posted = requests.post(f"{url}/items/42", data=b"hello", timeout=10)
        nested = requests.get(f"{url}/files/a/b/c.txt", timeout=10)
        wrong_method = requests.get(f"{url}/items/42", timeout=10)
        head = requests.head(f"{url}/files/a", timeout=10)
        prefixed = requests.post(f"{url}/api/items/42", timeout=10)

    assert posted.json() == {"id": "42", "body": "hello"}
    assert nested.json() == {"rest": "a/b/c.txt"}
    assert (wrong_method.status_code, head.status_code, prefixed.status_code) == (405, 405, 404)


@pytest.mark.parametrize(
    ("problem", "content"),
    [
        ("IsEncrypted is true", {"IsEncrypted": True, "Values": {}}),
        ("Values.POWERBI_PASSWORD must be a string", {"Values": {"POWERBI_PASSWORD": ["hunter2"]}}),
        ("cannot read it as JSON", "{not json"),
        ("CORS '*' cannot be combined with CORSCredentials", {"Host": {"CORS": "*", "CORSCredentials": True}}),
    ],
)
def test_a_bad_settings_file_is_named_without_its_values(tmp_path: Path, problem: str, content: Any) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")

    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "emulator.host", "--settings", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=60,
    )

    assert result.returncode == 2
    assert problem in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_values_that_are_numbers_or_booleans_become_strings(tmp_path: Path) -> None:
    path = settings_file(tmp_path / "s.json", {"A": 10, "B": True, "C": "x"})  # type: ignore[dict-item]
    environ = {"C": "from the shell"}

    skipped = LocalSettings.load(path).apply(environ, override=False)

    assert environ == {"A": "10", "B": "true", "C": "from the shell"}
    assert skipped == ["C"]


@pytest.fixture
def served(tiny: ModuleType, request: pytest.FixtureRequest) -> Iterator[str]:
    """The tiny app over real HTTP with the CORS policy the test is parametrized with."""
    origins, credentials = request.param
    with LocalHost(FunctionRoutes(find_app(tiny), "api"), cors=Cors.parse(origins, credentials)) as host:
        yield host.url


def preflight(url: str, origin: str) -> requests.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-a"}
    return requests.options(url, headers=headers, timeout=10)


@pytest.mark.parametrize("served", [(f"{PAGE}, http://localhost:8080", False)], indirect=True)
def test_cors_answers_listed_origins_only(served: str, tiny: ModuleType) -> None:
    url = f"{served}/api/files/x"

    listed, refused = preflight(url, PAGE), preflight(url, "http://elsewhere.example")
    read = requests.get(url, headers={"Origin": PAGE}, timeout=10)
    foreign = requests.get(url, headers={"Origin": "http://elsewhere.example"}, timeout=10)

    assert listed.status_code == refused.status_code == 204
    assert listed.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed.headers["Access-Control-Allow-Methods"] == "GET"
    assert listed.headers["Access-Control-Allow-Headers"] == "x-a"
    assert not any(h.startswith("Access-Control-") for h in refused.headers)
    assert (read.headers["Access-Control-Allow-Origin"], read.headers["Vary"]) == (PAGE, "Origin")
    assert "Access-Control-Allow-Origin" not in foreign.headers
    assert tiny.calls == ["GET", "GET"]  # preflights never reach a function


@pytest.mark.parametrize("served", [("*", False)], indirect=True)
def test_cors_star_only_when_listed(served: str) -> None:
    answer = requests.get(f"{served}/api/files/x", headers={"Origin": "http://any.example"}, timeout=10)

    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in answer.headers


@pytest.mark.parametrize("served", [(PAGE, True)], indirect=True)
def test_cors_credentials(served: str) -> None:
    listed = preflight(f"{served}/api/files/x", PAGE)

    assert listed.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("served", [("", False)], indirect=True)
def test_without_cors_a_preflight_is_routed_like_any_request(served: str) -> None:
    answer = preflight(f"{served}/api/files/x", PAGE)

    assert answer.status_code == 405
    assert "Access-Control-Allow-Origin" not in answer.headers


@pytest.mark.parametrize("served", [("", False)], indirect=True)
def test_the_request_log_leaves_out_the_query(served: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="emulator.host"):
        requests.get(f"{served}/api/files/x", params={"code": "key-Zq81"}, timeout=10)

    assert "GET /api/files/x -> 200" in caplog.messages
    assert "key-Zq81" not in caplog.text

"""Shared fixtures: the fake upstream over HTTPS on loopback, a hand-driven clock, and a service wired to both."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import function_app
from emulator import CLIENT_ID, TENANT_ID, USERNAME, WORKSPACE_ID, FakeUpstream
from emulator.entra import emulator_session
from emulator.host import FunctionRoutes
from shared.embed import EmbedService
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.azurite import AzuriteTables
from tests.redis_server import RedisServer

# Distinctive values, searched for in every captured log line.
SECRET = "S3cret-client-Q9xv7"
PASSWORD = "P4ssword-master-Z8kw2"
REDIS_PASSWORD = "R3dis-pass-K7mq4"


class FakeClock:
    """Wall time starts at the real time (the fake issues tokens in real time); waits only move the hands."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class ManualBackground:
    """Background work (``shared.background.Background``) that runs when the test says, not on a thread."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def submit(self, job: Callable[[], None]) -> bool:
        self.jobs.append(job)
        return True

    def run(self) -> int:
        """Run every queued job (and those they queue); how many ran."""
        ran = 0
        while self.jobs:
            self.jobs.pop(0)()
            ran += 1
        return ran


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    # This machine presets REQUESTS_CA_BUNDLE, which overrides Session.verify: trust the fake's CA instead.
    ca_file = str(upstream.write_ca_pem(tmp_path / "ca.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    upstream.reset()
    upstream.clients[CLIENT_ID] = SECRET
    upstream.users[USERNAME] = PASSWORD
    yield upstream
    upstream.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def env(fake: FakeUpstream) -> dict[str, str]:
    """App settings for a master user signing in through a confidential client."""
    return {
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": SECRET,
        "POWERBI_USERNAME": USERNAME,
        "POWERBI_PASSWORD": PASSWORD,
        "POWERBI_AUTHORITY_HOST": fake.base_url,
        "POWERBI_API_URL": fake.base_url,
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        # The tests read the detailed messages; tests/test_disclosure.py checks production answers.
        "POWERBI_ERROR_DETAILS": "true",
    }


@pytest.fixture
def make_service(clock: FakeClock, fake: FakeUpstream) -> Callable[[dict[str, str]], EmbedService]:
    def make(settings_env: dict[str, str]) -> EmbedService:
        # emulator_session: MSAL's port-less user-realm URL reaches the fake's port.
        # Background work (refreshes ahead) runs only when a test runs it: nothing races the test.
        return EmbedService.create(
            Settings.from_env(settings_env),
            clock=clock,
            session=emulator_session(fake.base_url),
            background=ManualBackground(),
        )

    return make


@pytest.fixture
def routes() -> Iterator[FunctionRoutes]:
    """function_app's registered routes, dispatched in-process as the worker would."""
    yield FunctionRoutes(function_app.app)
    function_app.use_service(None)


@pytest.fixture
def call(
    routes: FunctionRoutes,
    env: dict[str, str],
    make_service: Callable[[dict[str, str]], EmbedService],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """GET a path of the app configured by ``env`` (as it stands at the first call), in-process."""

    def get(path: str, headers: dict[str, str] | None = None, **params: str) -> Any:
        if function_app._service is None:
            for name in [n for n in os.environ if n.startswith("POWERBI_")]:
                monkeypatch.delenv(name)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            try:
                function_app.use_service(make_service(env))  # the same settings, with the test's clock
            except ConfigurationError:
                pass  # leave it to the app, which reads os.environ and answers the error itself
        return routes.dispatch("GET", path, params, headers)

    return get


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own (skips, with the install command, without one).

    It has a password: a URL without one means Entra ID sign-in, as with Azure Managed Redis.
    """
    server = RedisServer(tmp_path, password=REDIS_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteTables]:
    """A real Azurite table service for the session (skips, with the install command, without one): each test
    uses a table of its own; a test that stops Azurite starts an ``AzuriteTables`` of its own."""
    tables = AzuriteTables(tmp_path_factory.mktemp("azurite")).start()
    yield tables
    tables.stop()

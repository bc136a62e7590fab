"""Several instances of the function against one Redis and one emulator: the shared cache across processes.

Each instance is a real process (``python -m emulator.host``, the stand-in for the Functions host)
serving the app over HTTP; all of them use one redis-server of the test's own and the emulator,
which records every call it gets. Service-principal sign-in (no user-realm call).
"""

from __future__ import annotations

import base64
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator import CLIENT_ID, RLS_REPORT_ID, TENANT_ID, WORKSPACE_ID, FakeUpstream
from emulator.catalog import DASHBOARD_ID, REPORT_ID
from tests.conftest import REDIS_PASSWORD, SECRET
from tests.redis_server import RedisServer, SlowProxy

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(bytes(range(100, 132))).decode()
OTHER_CLIENT = "3f6a9c2e-5b7d-4e1f-8a3c-9d2e4f6a8b1c"
ALICE = {"X-MS-CLIENT-PRINCIPAL-NAME": "alice.fleet@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}
START_SECONDS = 30  # a bound on a process starting, not a wait


class Instance:
    """One function instance: a host process with its own in-process caches, and its log."""

    def __init__(self, settings: Path, ca: Path) -> None:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "REQUESTS_CA_BUNDLE": str(ca),
            "SSL_CERT_FILE": str(ca),
        }
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "emulator.host", "--port", "0", "--settings", str(settings)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_SECONDS
        while True:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("the host exited:\n" + "\n".join(self.log))
            if match := re.match(r"Listening on (http://\S+)\. Ctrl-C to stop\.$", line):
                self.url = match.group(1)
                return

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.get(self.url + path, headers=headers, timeout=30)

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    def wait_for(self, text: str) -> list[str]:
        """The log lines with ``text``, once there is one (the log arrives through a pipe, after the answer)."""
        deadline = time.monotonic() + START_SECONDS
        while not self.lines(text) and time.monotonic() < deadline:
            try:
                self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
        return self.lines(text)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Fleet:
    """Instances of one or more apps, on one Redis, against one emulator."""

    def __init__(self, fake: FakeUpstream, tmp: Path, redis_url: str, stack: ExitStack) -> None:
        self.fake, self.tmp, self.redis_url, self.stack = fake, tmp, redis_url, stack
        self.ca = fake.write_ca_pem(tmp / "fleet-ca.pem")

    def settings(self, client_id: str = CLIENT_ID, **extra: str) -> dict[str, str]:
        return {
            "POWERBI_AUTH_MODE": "ServicePrincipal",
            "POWERBI_TENANT_ID": TENANT_ID,
            "POWERBI_CLIENT_ID": client_id,
            "POWERBI_CLIENT_SECRET": SECRET,
            "POWERBI_AUTHORITY_HOST": self.fake.base_url,
            "POWERBI_API_URL": self.fake.base_url,
            "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
            "POWERBI_HTTP_AUTH_LEVEL": "anonymous",
            "POWERBI_CACHE_URL": self.redis_url,
            "POWERBI_CACHE_ENCRYPTION_KEY": KEY,
            # The breaker's pause is tested with a hand-driven clock (test_shared_cache); here Redis is
            # tried again at once, so that a restart shows without waiting. A second per Redis call: a
            # loaded CI machine must not look like a slow Redis (the slow Redis test sets 100 ms).
            "POWERBI_CACHE_BREAKER_SECONDS": "0",
            "POWERBI_CACHE_TIMEOUT_MS": "1000",
            **extra,
        }

    def start(self, count: int = 1, **settings: str) -> list[Instance]:
        started = []
        for _ in range(count):
            path = self.tmp / f"settings-{len(list(self.tmp.glob('settings-*')))}.json"
            path.write_text(json.dumps({"IsEncrypted": False, "Values": self.settings(**settings)}))
            instance = Instance(path, self.ca)
            self.stack.callback(instance.stop)
            started.append(instance)
        return started


@pytest.fixture
def fleet(fake: FakeUpstream, tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    fake.clients[OTHER_CLIENT] = SECRET
    fake.set_member(WORKSPACE_ID, OTHER_CLIENT, "Member")
    with ExitStack() as stack:
        yield Fleet(fake, tmp_path, redis_server.url, stack)


def at_once(*calls: Callable[[], requests.Response]) -> list[requests.Response]:
    """Run the calls on threads released together, as concurrent users would arrive."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(n: int) -> None:
        barrier.wait()
        results[n] = calls[n]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def minted(fake: FakeUpstream) -> int:
    return len(fake.calls("POST", "GenerateToken"))


def dump(server: RedisServer) -> str:
    """What an operator's dump shows: every key, and the value of each."""
    names = server.cli("--scan").split()
    return "\n".join(names + [server.cli("GET", name) for name in names])


REPORT = f"/api/embed/reports/{REPORT_ID}"
DASHBOARD = f"/api/embed/dashboards/{DASHBOARD_ID}"


def test_two_processes_one_cold_key_at_once_make_one_generate_token(fleet: Fleet, fake: FakeUpstream) -> None:
    one, two = fleet.start(2)
    fake.latency_for("GenerateToken", 0.5)  # long enough that both requests are in flight together
    answers = at_once(lambda: one.get(REPORT), lambda: two.get(REPORT))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["tokenId"] == answers[1].json()["tokenId"]
    assert minted(fake) == 1
    # One process minted it; the other waited on the Redis lock and read what it shared.
    outcomes = sorted(re.search(r"cache=(\w+)", i.wait_for("embed report")[0]).group(1) for i in (one, two))  # type: ignore[union-attr]
    assert outcomes == ["l2", "miss"]


def test_a_token_minted_by_one_process_is_served_by_another_without_any_upstream_call(
    fleet: Fleet, fake: FakeUpstream
) -> None:
    one, two = fleet.start(2)
    first = one.get(REPORT)
    assert first.status_code == 200
    fake.reset_records()
    second = two.get(REPORT)
    assert second.status_code == 200
    assert second.json()["accessToken"] == first.json()["accessToken"]
    assert fake.requests == []  # no sign-in, no catalog read, no GenerateToken: all from Redis
    assert "cache=l2 upstream_calls=0" in two.wait_for("embed report")[0]


def test_redis_stopped_mid_run_then_restarted(fleet: Fleet, fake: FakeUpstream, redis_server: RedisServer) -> None:
    one, two = fleet.start(2)
    assert one.get(REPORT).status_code == 200
    redis_server.stop()
    # Served all the same: from the process (L1), or from Power BI where the process has nothing.
    assert one.get(REPORT).status_code == 200
    assert two.get(REPORT).status_code == 200
    assert one.get(DASHBOARD).status_code == 200
    for instance in (one, two):
        assert len(instance.wait_for("shared cache (Redis) unavailable")) == 1
        assert not instance.lines("Traceback")

    redis_server.start()  # the same port, and empty
    fake.reset_records()
    assert two.get(DASHBOARD).status_code == 200  # minted, and shared again
    assert minted(fake) == 1
    assert redis_server.cli("--scan").split()
    fake.reset_records()
    assert fleet.start(1)[0].get(DASHBOARD).status_code == 200
    # A new instance got the token from Redis (catalog listings kept in process while Redis was away
    # were not shared, so it may still read one of those).
    assert minted(fake) == 0
    assert len(two.wait_for("shared cache (Redis) is back")) == 1


def test_a_redis_answering_after_2_s_does_not_hold_requests_up(
    fleet: Fleet, fake: FakeUpstream, redis_server: RedisServer
) -> None:
    with SlowProxy(redis_server.port, delay=2.0) as proxy:
        fleet.redis_url = proxy.url(REDIS_PASSWORD)
        (one,) = fleet.start(1, POWERBI_CACHE_TIMEOUT_MS="100", POWERBI_CACHE_BREAKER_SECONDS="30")
        assert one.get("/api/health").status_code == 200  # the service built, its modules imported: no Redis call
        started = time.monotonic()
        answer = one.get(REPORT)
        elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert elapsed < 2.0  # the first Redis call gave up after 100 ms, the others were not tried; 20 s deadline
    (line,) = one.wait_for("shared cache (Redis) unavailable")
    assert "TimeoutError" in line


def test_a_corrupt_entry_is_a_miss(fleet: Fleet, fake: FakeUpstream, redis_server: RedisServer) -> None:
    one, two = fleet.start(2)
    assert one.get(REPORT).status_code == 200
    for name in redis_server.cli("--scan").split():
        redis_server.cli("SET", name, "corrupted")
    fake.reset_records()
    answer = two.get(REPORT)
    assert answer.status_code == 200
    assert minted(fake) == 1  # read again from Power BI
    assert two.wait_for("unreadable")


def test_the_dump_holds_no_token_user_name_or_secret(
    fleet: Fleet, fake: FakeUpstream, redis_server: RedisServer
) -> None:
    (one,) = fleet.start(
        1, POWERBI_RLS_USERNAME_SOURCE="principal", POWERBI_RLS_ROLES="Region", WEBSITE_AUTH_ENABLED="True"
    )
    plain, rls = one.get(REPORT, ALICE), one.get(f"/api/embed/reports/{RLS_REPORT_ID}", ALICE)
    assert plain.status_code == 200 and rls.status_code == 200, rls.text
    text = dump(redis_server)
    assert ":embed:" in text and ":catalog:" in text
    tokens = [plain.json()["accessToken"], rls.json()["accessToken"]]
    entra = list(fake.access_tokens)
    assert entra
    for clear in (*tokens, *entra, "alice.fleet", "contoso.com", SECRET, REDIS_PASSWORD, KEY, REPORT_ID, "Region"):
        assert clear not in text


def test_two_apps_with_different_client_ids_on_one_redis_share_nothing(
    fleet: Fleet, fake: FakeUpstream, redis_server: RedisServer
) -> None:
    (mine,) = fleet.start(1)
    (other,) = fleet.start(1, client_id=OTHER_CLIENT)
    first = mine.get(REPORT)
    fake.reset_records()
    second = other.get(REPORT)
    assert first.status_code == 200 and second.status_code == 200
    assert second.json()["tokenId"] != first.json()["tokenId"]
    assert minted(fake) == 1 and fake.token_calls  # the other app signed in and minted its own
    namespaces = {name.split(":")[1] for name in redis_server.cli("--scan").split()}
    assert len(namespaces) == 2

"""Figures for the function's speed targets; prints them, asserts nothing (targets live here, not in tests).

    python benchmarks/bench.py

- import time of ``function_app`` beside that of its three runtime packages (fresh
  interpreters, median of several runs), and the ratio of the two imports each in its own
  interpreter (issue 17: at most 1.1x), telemetry off;
- a cache hit with telemetry off, OTLP on and Application Insights on (exporters at local receivers), in
  process and over HTTP through the local host;
- upstream calls for 100 requests to one report in one process, against the fake;
- time per request on a cache hit and on a cold start, through the registered route;
- upstream calls for 32 concurrent cold requests;
- peak Python memory for 10,000 cached requests;
- the catalog and the bounded caches (issue 10): a cold request for 50 reports (Power BI calls by kind),
  1,000 random GUIDs (upstream calls), 1,000 signed-in users on a plain report and the same 3 reports in 6
  orders (GenerateToken calls), peak memory at 1,000 vs 100,000 users on an RLS report with
  POWERBI_CACHE_MAX_TOKENS=1000, and the wall time of the cold 50-report request when the emulator delays
  each Power BI call by 200 ms;
- nobody waits, nothing amplifies (issue 17; also alone with ``--issue17``), on a simulated clock shared
  with the emulator, each Power BI call taking 200 ms of it: 3 hours of 50 keys each asked every 30 s
  (Entra tokens of 60 to 90 minutes), with refresh ahead and without; 30 minutes of Power BI answering 503
  after an hour; 63 subsets of 6 reports in one minute with a budget of 10 new tokens a minute.

Many customers (issue 16), also alone with ``python benchmarks/bench.py --customers`` (about a minute):
1,000 customers in an Azure Storage table (a real Azurite), each with its own profile and workspace holding
one report, 10 signed-in users each asking for it through the route (no RLS): GenerateToken calls, table
reads, Power BI list reads, and peak process memory (max RSS, a fresh process per run) with
POWERBI_CACHE_MAX_TOKENS=1000 for 1,000 customers against 100.

The 100,000-user figure runs ``EmbedService.embed`` in process (policy, catalog, canonical key, the bounded
cache) with the catalog read from the emulator but GenerateToken answered in process (``InProcessMint``):
100,000 GenerateToken calls over loopback TLS would measure the emulator, not the cache.
"""

from __future__ import annotations

import base64
import gc
import itertools
import json
import logging
import multiprocessing
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import function_app  # noqa: E402
from emulator import (  # noqa: E402
    CLIENT_ID,
    CLIENT_SECRET,
    DATASET_ID,
    PASSWORD,
    REPORT_ID,
    RLS_REPORT_ID,
    TENANT_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator import catalog as cat  # noqa: E402
from emulator.entra import emulator_session  # noqa: E402
from emulator.host import FunctionRoutes  # noqa: E402
from shared.budget import Budget  # noqa: E402
from shared.embed import EmbedService  # noqa: E402
from shared.errors import EmbedError, NotFound, Throttled  # noqa: E402
from shared.identity import Identity  # noqa: E402
from shared.powerbi import EmbedToken, PowerBIClient, TokenRequest  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.conftest import FakeClock, ManualBackground  # noqa: E402

# A Power BI embed token is about this long (the emulator's are shorter); the memory figure uses it.
EMBED_TOKEN_CHARS = 1000


class InProcessMint(PowerBIClient):
    """Power BI's reads as usual (the emulator), GenerateToken answered in process: for the 100,000-user run."""

    def __init__(self, base: PowerBIClient) -> None:
        super().__init__(base.base.removesuffix("/v1.0/myorg"), base.http, base.lifetime_minutes)
        self.minted = 0
        self.api_host = base.api_host

    def generate_token(self, access_token: str, request: TokenRequest) -> EmbedToken:
        self.minted += 1
        expiration = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        return EmbedToken(
            "H4sI" + secrets.token_urlsafe(EMBED_TOKEN_CHARS)[:EMBED_TOKEN_CHARS], str(uuid.uuid4()), expiration
        )


def _telemetry_off() -> dict[str, str]:
    """This process's environment without any telemetry setting."""
    names = ("OTEL_", "APPLICATIONINSIGHTS_", "PYTHON_APPLICATIONINSIGHTS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(names)}


def import_seconds(runs: int = 7) -> tuple[float, float]:
    """Median seconds, in fresh interpreters: the three runtime packages, then function_app on top of them."""
    code = (
        "import time; t = time.perf_counter(); import azure.functions, msal, requests; "
        "a = time.perf_counter(); import function_app; print(a - t, time.perf_counter() - a)"
    )
    runs_out = [
        subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True, env=_telemetry_off()).split()  # noqa: S603
        for _ in range(runs)
    ]
    return statistics.median(float(r[0]) for r in runs_out), statistics.median(float(r[1]) for r in runs_out)


def settings_env(fake: FakeUpstream) -> dict[str, str]:
    return {
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": CLIENT_SECRET,
        "POWERBI_USERNAME": USERNAME,
        "POWERBI_PASSWORD": PASSWORD,
        "POWERBI_AUTHORITY_HOST": fake.base_url,
        "POWERBI_API_URL": fake.base_url,
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
    }


def import_ratio(runs: int = 9, *, bytecode: bool = True) -> tuple[float, float, float]:
    """``import function_app`` against ``import azure.functions, msal, requests``, each alone in its own fresh
    interpreter (alternating, so both see the same machine load): the median seconds of each and their ratio
    (issue 17's target: at most 1.1).

    ``bytecode``: the app's modules load from cached bytecode, as the packages' do (a private cache directory,
    filled by a first import); without it they are compiled from source each time, as on a machine that sets
    PYTHONDONTWRITEBYTECODE or a read-only package without ``__pycache__`` (as long as the checkout itself
    holds no ``__pycache__``: those would be read).
    """
    timed = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in _telemetry_off().items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        if bytecode:
            env["PYTHONPYCACHEPREFIX"] = cache
            subprocess.check_call([sys.executable, "-c", "import function_app"], cwd=ROOT, env=env)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        packages: list[float] = []
        app: list[float] = []
        for _ in range(runs):
            for modules, into in (("azure.functions, msal, requests", packages), ("function_app", app)):
                command = [sys.executable, "-c", timed.format(modules)]
                into.append(float(subprocess.check_output(command, cwd=ROOT, env=env, text=True).split()[-1]))  # noqa: S603
    ours, theirs = statistics.median(app), statistics.median(packages)
    return theirs, ours, ours / theirs


def settings(fake: FakeUpstream, **more: str) -> Settings:
    return Settings.from_env(more | settings_env(fake))


def main() -> None:
    packages, ours = import_seconds()
    print(f"import azure.functions + msal + requests: {packages * 1000:.0f} ms (median of 7 fresh interpreters)")
    print(f"import function_app on top of them:       {ours * 1000:.0f} ms more ({ours / packages:.0%})")
    for bytecode, how in ((True, "from cached bytecode"), (False, "compiled from source")):
        alone, app, ratio = import_ratio(bytecode=bytecode)
        print(
            f"import function_app alone ({how}): {app * 1000:.0f} ms, {ratio:.2f}x the three packages alone "
            f"({alone * 1000:.0f} ms; median of 9 fresh interpreters each; target at most 1.10x)"
        )
    telemetry_figures()

    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        routes = FunctionRoutes(function_app.app)
        path = f"/api/embed/reports/{REPORT_ID}"

        function_app.use_service(EmbedService.create(settings(fake), session=emulator_session(fake.base_url)))
        started = time.perf_counter()
        assert routes.dispatch("GET", path).status_code == 200
        cold = time.perf_counter() - started
        hits = []
        for _ in range(99):
            started = time.perf_counter()
            routes.dispatch("GET", path)
            hits.append(time.perf_counter() - started)
        print(f"100 requests to one report: {len(fake.requests)} upstream calls ({', '.join(_kinds(fake))})")
        print(f"cold request (sign-in, report, GenerateToken over loopback TLS): {cold * 1000:.1f} ms")
        hits.sort()
        print(
            f"cache hit: median {statistics.median(hits) * 1e6:.0f} us, "
            f"p99 {hits[int(len(hits) * 0.99) - 1] * 1e6:.0f} us"
        )

        fake.reset_records()
        service = EmbedService.create(settings(fake), session=emulator_session(fake.base_url))
        barrier = threading.Barrier(32)

        def cold_request() -> None:
            barrier.wait()
            service.embed("report", REPORT_ID, None)

        threads = [threading.Thread(target=cold_request) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(
            f"32 concurrent cold requests: {len(fake.calls('POST', 'GenerateToken'))} GenerateToken, "
            f"{len(fake.token_calls)} sign-in, {len(fake.requests)} upstream calls in all"
        )

        tracemalloc.start()
        for _ in range(10_000):
            routes.dispatch("GET", path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak Python memory over 10,000 cached requests: {peak / 1024:.0f} KiB")
        function_app.use_service(None)

        catalog_figures(fake)
        fake.reset()
        issue17_figures(fake)
    customers_figures()


def publish(fake: FakeUpstream, count: int) -> list[str]:
    """``count`` more reports on the plain dataset in the Sales workspace."""
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, count + 1)]
    ws = cat.workspace(fake.catalog, WORKSPACE_ID)
    assert ws is not None
    ws["reports"] += [{"id": i, "name": f"Report {i[-4:]}", "datasetId": DATASET_ID} for i in ids]
    return ids


class NoBudget(Budget):
    """The memory figures measure the cache with a new user per request: no new-token budget (the default
    would refuse the 301st new token of a minute, as it should)."""

    def take(self, principal: str | None = None, *, background: bool = False) -> None:
        return None


def catalog_figures(fake: FakeUpstream) -> None:
    reports = publish(fake, 50)
    principal = {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region"}
    principal["WEBSITE_AUTH_ENABLED"] = "True"

    fake.reset_records()
    service = EmbedService.create(settings(fake), session=emulator_session(fake.base_url))
    service.embed("reports", reports)
    print(f"cold request for 50 reports: {_by_kind(fake, pbi_only=True)} (besides signing in: {_sign_in(fake)})")

    fake.reset_records()
    service = EmbedService.create(
        settings(fake), session=emulator_session(fake.base_url)
    )  # cold: its catalog not read yet
    misses = 0
    for _ in range(1000):
        try:
            service.embed("report", str(uuid.uuid4()))
        except NotFound:
            misses += 1
    print(f"1,000 random GUIDs, cold: {misses} answered 404; Power BI: {_by_kind(fake, pbi_only=True)}")

    fake.reset_records()
    service = EmbedService.create(settings(fake, **principal), session=emulator_session(fake.base_url))
    for n in range(1000):
        service.embed("report", REPORT_ID, identity=Identity(f"user{n}@contoso.com", ("Region",)))
    print(f"1,000 signed-in users on a plain report: {len(fake.calls('POST', 'GenerateToken'))} GenerateToken")

    fake.reset_records()
    for order in itertools.permutations(reports[:3]):
        service.embed("reports", list(order))
    print(f"the same 3 reports in 6 orders: {len(fake.calls('POST', 'GenerateToken'))} GenerateToken")

    runs = {users: memory_for_users(fake, principal, users) for users in (1_000, 10_000, 100_000)}
    small, large = runs[1_000], runs[100_000]
    traced = ", ".join(f"{users:,} users {run[0] / 1024:.0f} KiB" for users, run in runs.items())
    print(
        f"peak Python memory (tracemalloc), RLS report, POWERBI_CACHE_MAX_TOKENS=1000, in process: {traced} "
        f"(100,000 vs 1,000: {large[0] / small[0] - 1:+.1%}); tokens kept {small[1]} and {large[1]}"
    )
    print(f"after 100,000 users: the most recent user is {large[2]}, the first user {large[3]}")
    rss = {users: process_peak_rss(users) for users in (1_000, 100_000)}
    print(
        f"peak process memory (max RSS, a fresh process per run): 1,000 users {rss[1_000] / 1024:.1f} MiB, "
        f"100,000 users {rss[100_000] / 1024:.1f} MiB ({rss[100_000] / rss[1_000] - 1:+.1%})"
    )

    fake.reset_records()
    fake.latency = 0.2
    service = EmbedService.create(settings(fake), session=emulator_session(fake.base_url))
    started = time.perf_counter()
    service.embed("reports", reports)
    elapsed = time.perf_counter() - started
    fake.latency = 0.0
    print(
        f"cold 50-report request, each Power BI call delayed 200 ms: {elapsed * 1000:.0f} ms wall "
        f"({_by_kind(fake, pbi_only=True)}; sign-in {_sign_in(fake)})"
    )


def memory_for_users(
    fake: FakeUpstream, principal: dict[str, str], users: int, trace: bool = True
) -> tuple[int, int, str, str]:
    """(peak traced bytes, tokens kept, the last user's outcome, the first user's outcome) for ``users``
    distinct users on an RLS report, each once, through ``EmbedService.embed``."""
    gc.collect()
    service = EmbedService.create(
        settings(fake, POWERBI_CACHE_MAX_TOKENS="1000", **principal), session=emulator_session(fake.base_url)
    )
    mint = InProcessMint(service.powerbi)
    service.powerbi = service.catalog.powerbi = service.embed_tokens.powerbi = mint
    service.embed_tokens.budget = NoBudget(1, 1, service.clock)
    service.embed("report", RLS_REPORT_ID, identity=Identity("warm-up@contoso.com", ("Region",)))  # the catalog
    if trace:
        tracemalloc.start()
    for n in range(users):
        service.embed("report", RLS_REPORT_ID, identity=Identity(f"user{n}@contoso.com", ("Region",)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def outcome(n: int) -> str:
        before = mint.minted
        service.embed("report", RLS_REPORT_ID, identity=Identity(f"user{n}@contoso.com", ("Region",)))
        return "a cache hit" if mint.minted == before else "a new GenerateToken"

    kept = len(service.embed_tokens.cache)
    return peak, kept, outcome(users - 1), outcome(0)


def process_peak_rss(users: int) -> int:
    """Max RSS in KiB of a fresh process serving ``users`` distinct users (``--users N`` below)."""
    out = subprocess.check_output([sys.executable, __file__, "--users", str(users)], cwd=ROOT, text=True)  # noqa: S603
    return int(out.split()[-1])


def rss_run(users: int) -> None:
    """The child of process_peak_rss: one run, then its max RSS (KiB) on the last line."""
    principal = {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region"}
    principal["WEBSITE_AUTH_ENABLED"] = "True"
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        memory_for_users(fake, principal, users, trace=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _by_kind(fake: FakeUpstream, pbi_only: bool = False) -> str:
    calls = [r for r in fake.requests if not pbi_only or r.path.startswith("/v1.0/")]
    counts: dict[str, int] = {}
    for r in calls:
        name = f"{r.method} {r.path.split('/')[-1]}"
        counts[name] = counts.get(name, 0) + 1
    return f"{len(calls)} calls: " + ", ".join(f"{n} x{c}" for n, c in counts.items()) if calls else "0 calls"


def _sign_in(fake: FakeUpstream) -> str:
    return f"{len([r for r in fake.requests if not r.path.startswith('/v1.0/')])} Entra calls"


def _kinds(fake: FakeUpstream) -> list[str]:
    return [f"{r.method} {r.path.split('/')[-1] or r.path}" for r in fake.requests]


def telemetry_figures() -> None:
    """Cache-hit time per request with telemetry off, OTLP on and Application Insights on, the exporters at
    local receivers: in process through the registered route (the function's own time; a fresh process
    each, as telemetry is configured once per process), and over HTTP through the local host (what a
    caller sees on loopback)."""
    from tests.telemetry_receivers import IngestionStandIn, OtlpReceiver

    with OtlpReceiver() as otlp, IngestionStandIn() as ingestion, FakeUpstream() as fake:
        connection = f"InstrumentationKey=11111111-2222-3333-4444-555555555555;IngestionEndpoint={ingestion.url}/"
        modes = {
            "off": {},
            "OTLP": {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url},
            "Application Insights": {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": connection,
                "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            },
        }
        # Every trace sampled, metrics every second: the most telemetry costs.
        common = {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
        # Rounds alternate the modes, and each figure is the median of its rounds: on a shared machine a
        # burst of other work then lands on every mode alike.
        runs: dict[str, list[float]] = {name: [] for name in modes}
        http_runs: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(3):
            for name, env in modes.items():
                out = subprocess.check_output(  # noqa: S603
                    [sys.executable, __file__, "--hits"], cwd=ROOT, text=True, env=_telemetry_off() | common | env
                )
                runs[name].append(float(out.split()[-1]))
                http_runs[name].append(host_hits(fake, common | env))
        in_process = {name: statistics.median(values) for name, values in runs.items()}
        over_http = {name: statistics.median(values) for name, values in http_runs.items()}
    for label, figures in (("in process", in_process), ("over HTTP, local host", over_http)):
        off = figures["off"]
        for name, median in figures.items():
            print(f"cache hit {label}, telemetry {name}: median {median:.0f} us ({median / off:.2f}x off)")


def host_hits(fake: FakeUpstream, telemetry: dict[str, str], count: int = 1000) -> float:
    """Median microseconds of a cache hit over HTTP through ``python -m emulator.host``."""
    import json
    import socket

    import requests

    with tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        local = Path(tmp) / "local.settings.json"
        local.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = _telemetry_off() | telemetry | dict(settings_env(fake))
        env |= {"REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}
        argv = [sys.executable, "-m", "emulator.host", "--settings", str(local), "--port", str(port)]
        with open(Path(tmp) / "host.log", "w") as log:
            host = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            url = f"http://127.0.0.1:{port}/api/embed/reports/{REPORT_ID}"
            session = requests.Session()
            for _ in range(600):  # until the host listens
                try:
                    if session.get(url, timeout=10).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.05)
            times = []
            for _ in range(count):
                started = time.perf_counter()
                session.get(url, timeout=10)
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1e6
        finally:
            host.terminate()
            host.wait(timeout=60)


def hits_run(count: int = 3000) -> None:
    """Median microseconds of a cache hit through the registered route (``--hits``)."""
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        routes = FunctionRoutes(function_app.app)
        path = f"/api/embed/reports/{REPORT_ID}"
        function_app.use_service(EmbedService.create(settings(fake), session=emulator_session(fake.base_url)))
        assert routes.dispatch("GET", path).status_code == 200
        hits = []
        for _ in range(count):
            started = time.perf_counter()
            routes.dispatch("GET", path)
            hits.append(time.perf_counter() - started)
        print(statistics.median(hits) * 1e6)


CUSTOMER_USERS = 10  # signed-in users per customer
WORKER_THREADS = int(os.environ.get("BENCH_THREADS", "6"))


def customers_figures() -> None:
    """1,000 customers against 100, each run in a fresh process (``--customers-run N``)."""
    runs = {}
    for count in (100, 1_000):
        out = subprocess.check_output(  # noqa: S603 - our own interpreter and script
            [sys.executable, __file__, "--customers-run", str(count)], cwd=ROOT, text=True
        )
        runs[count] = dict(line.split("=", 1) for line in out.split() if "=" in line)
    big, small = runs[1_000], runs[100]
    print(
        f"1,000 customers (table source, Azurite), {CUSTOMER_USERS} signed-in users each, one report each, "
        f"{int(big['requests']):,} requests: {big['generate']} GenerateToken, {big['reads']} table reads, "
        f"{big['lists']} Power BI list reads ({big['failed']} requests failed; {float(big['seconds']):.0f} s)"
    )
    rss_big, rss_small = int(big["rss"]), int(small["rss"])
    print(
        f"peak process memory (max RSS, a fresh process per run), POWERBI_CACHE_MAX_TOKENS=1000: "
        f"100 customers {rss_small / 1024:.1f} MiB, 1,000 customers {rss_big / 1024:.1f} MiB "
        f"({rss_big / rss_small - 1:+.1%})"
    )
    if "traced_kib" in big:  # BENCH_TRACE=1
        print(
            f"kept by the function (tracemalloc, now/peak KiB): 100 customers {small['traced_kib']}, "
            f"1,000 customers {big['traced_kib']}"
        )


def customers_run(count: int) -> None:
    """The child of customers_figures: ``count`` customers served, then its counts and max RSS (KiB).

    The emulator runs in a process of its own, so this process's memory is the function's (and the bench's)."""
    from azure.data.tables import TableClient

    from shared.customers.directory import Customer, table_client
    from shared.customers.table import TableDirectory
    from tests.azurite import AzuriteTables, CountingTable

    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp) / "ca.pem"
        ours, theirs = multiprocessing.get_context("fork").Pipe()
        emulator = multiprocessing.get_context("fork").Process(target=_emulator, args=(count, ca, theirs))
        emulator.start()
        base_url = ours.recv()
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(ca)
        azurite = AzuriteTables(Path(tmp)).start()
        try:
            table = TableClient.from_connection_string(azurite.connection_string, "customers")
            table.create_table()
            for start in range(0, count, 100):  # one batch holds at most 100 entities of one partition
                batch = [_customer(n) for n in range(start, min(start + 100, count))]
                table.submit_transaction([("upsert", Customer.from_json(c.directory).to_entity()) for c in batch])
            env = {
                "POWERBI_TENANT_ID": TENANT_ID,
                "POWERBI_AUTH_MODE": "ServicePrincipal",
                "POWERBI_CLIENT_ID": CLIENT_ID,
                "POWERBI_CLIENT_SECRET": CLIENT_SECRET,
                "POWERBI_AUTHORITY_HOST": base_url,
                "POWERBI_API_URL": base_url,
                "POWERBI_CACHE_MAX_TOKENS": "1000",
                "POWERBI_MAX_NEW_TOKENS_PER_MINUTE": "100000",  # 1,000 first tokens in seconds: not a budget figure
                "WEBSITE_AUTH_ENABLED": "True",
                "POWERBI_CUSTOMERS_SOURCE": "table",
                "POWERBI_CUSTOMER_FROM": "claim:extension_CustomerId",
                "POWERBI_CUSTOMERS_CONNECTION": "CustomersStorage",
                "CustomersStorage": azurite.connection_string,
            }
            service = EmbedService.create(Settings.from_env(env))
            assert service.customers is not None and service.settings.customers is not None
            reads = CountingTable(table_client(service.settings.customers))
            service.customers.directory = TableDirectory(reads, 300)
            function_app.use_service(service)
            routes = FunctionRoutes(function_app.app)
            started = time.perf_counter()
            if os.environ.get("BENCH_TRACE"):
                tracemalloc.start()

            def request(user: int, n: int) -> bool:
                customer = f"customer{n}"  # made per request: the bench holds nothing per customer
                headers = _signed_in(f"user{user}@{customer}.example", customer)
                report = _ids(n)[1]
                return routes.dispatch("GET", f"/api/embed/reports/{report}", None, headers).status_code == 200

            # As the Functions worker runs them: on a pool of 6 threads (2 cores); user by user, customer by customer.
            # One round of requests at a time, so that the bench's own futures do not weigh in the memory figure.
            failed = 0
            with ThreadPoolExecutor(WORKER_THREADS) as pool:
                for user in range(CUSTOMER_USERS):
                    failed += sum(not ok for ok in pool.map(lambda n, u=user: request(u, n), range(count)))
            seconds = time.perf_counter() - started
            if tracemalloc.is_tracing():  # BENCH_TRACE=1: what the function keeps, without the allocator's slack
                gc.collect()
                print("traced_kib={}/{}".format(*(v // 1024 for v in tracemalloc.get_traced_memory())))
        finally:
            azurite.stop()
            ours.send("counts")
            counts = ours.recv()
            emulator.join()
    print(f"requests={CUSTOMER_USERS * count} generate={counts['generate']} lists={counts['lists']}")
    print(f"reads={len(reads.reads)} failed={failed} seconds={seconds:.1f}")
    print(f"rss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


@dataclass(frozen=True)
class BenchCustomer:
    id: str
    report: str
    directory: dict[str, Any]  # its POWERBI_CUSTOMERS object
    workspace: dict[str, Any]  # its workspace in the emulator's catalogue


def _ids(n: int) -> tuple[str, str, str, str]:
    """Customer ``n``'s workspace, report, dataset and profile ids."""
    workspace, report, dataset, profile = (f"{p}0000000-0000-4000-8000-{n:012d}" for p in "abcd")
    return workspace, report, dataset, profile


def _customer(n: int) -> BenchCustomer:
    """Customer ``n``: a profile and a workspace of its own holding one report (no RLS)."""
    workspace, report, dataset, profile = _ids(n)
    catalog = {
        "id": workspace,
        "name": f"Customer {n}",
        "datasets": [{"id": dataset, "name": "Sales"}],
        "reports": [{"id": report, "name": "Sales", "datasetId": dataset}],
    }
    directory = {"id": f"customer{n}", "profileId": profile, "workspaces": [workspace]}
    return BenchCustomer(f"customer{n}", report, directory, catalog)


def _emulator(count: int, ca: Path, pipe: Connection) -> None:
    """The emulator's process: its catalogue holds the customers' workspaces; it answers the counts when asked."""
    with FakeUpstream() as fake:
        fake.catalog["workspaces"] += [_customer(n).workspace for n in range(count)]
        fake.write_ca_pem(ca)
        pipe.send(fake.base_url)
        pipe.recv()
        lists = len([r for r in fake.calls("GET") if r.path.startswith("/v1.0/")])
        pipe.send({"generate": len(fake.calls("POST", "GenerateToken")), "lists": lists})


def _signed_in(name: str, customer: str) -> dict[str, str]:
    """App Service Authentication's principal headers for a user of ``customer``."""
    claims = [{"typ": "preferred_username", "val": name}, {"typ": "extension_CustomerId", "val": customer}]
    principal = json.dumps({"auth_typ": "aad", "claims": claims})
    return {
        "X-MS-CLIENT-PRINCIPAL": base64.b64encode(principal.encode()).decode(),
        "X-MS-CLIENT-PRINCIPAL-NAME": name,
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
    }


# -- issue 17: nobody waits, nothing amplifies --------------------------------------------------------------

RLS_PRINCIPAL = {
    "POWERBI_RLS_USERNAME_SOURCE": "principal",
    "POWERBI_RLS_ROLES": "Region",
    "WEBSITE_AUTH_ENABLED": "True",
}


class Simulated:
    """The emulator and the function on one simulated clock; background work runs between requests and takes
    none of the requests' time (on a worker it runs beside them)."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake, self.clock, self.jobs = fake, FakeClock(), ManualBackground()
        self.start = self.clock.monotonic()

    def __enter__(self) -> Simulated:
        # The stale and refresh warnings of an outage, once per key per back-off: not the figures' business.
        logging.getLogger("shared").setLevel(logging.ERROR)
        self.saved_clock = self.fake.clock
        self.fake.clock = self.clock.now
        self.delay()
        rng = random.Random(17)  # noqa: S311 - a repeatable simulation, no secret
        self.fake.next_lifetimes = [rng.randint(60 * 60, 90 * 60) for _ in range(1000)]  # Entra: 60 to 90 min
        return self

    def delay(self) -> None:
        self.fake.latency, self.fake.wait_with = 0.2, self.clock.sleep

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("shared").setLevel(logging.NOTSET)
        self.fake.clock = self.saved_clock
        self.fake.clear_faults()
        self.fake.reset_records()

    def service(self, **more: str) -> EmbedService:
        return EmbedService.create(
            settings(self.fake, **RLS_PRINCIPAL, **more),
            clock=self.clock,
            session=emulator_session(self.fake.base_url),
            background=self.jobs,
        )

    def at(self, seconds: float) -> None:
        if self.clock.monotonic() < self.start + seconds:
            self.clock.advance(self.start + seconds - self.clock.monotonic())

    def background(self) -> None:
        wall, mono = self.clock.wall, self.clock.mono
        self.jobs.run()
        self.clock.wall, self.clock.mono = wall, mono


def ask(sim: Simulated, service: EmbedService, user: int) -> tuple[int, bool, float, float]:
    """One request of key ``user``: (status, whether it called upstream, answer seconds, token seconds left)."""
    calls, started, real = len(sim.fake.requests), sim.clock.monotonic(), time.perf_counter()
    identity = Identity(f"user{user}@contoso.com", ("Region",))
    try:
        embed = service.embed("report", RLS_REPORT_ID, identity=identity)
        status, left = 200, embed.token.expires_at - sim.clock.now()
    except EmbedError as error:
        status, left = error.status, 0.0
    elapsed = sim.clock.monotonic() - started + time.perf_counter() - real
    return status, len(sim.fake.requests) > calls, elapsed, left


def refresh_ahead_run(fake: FakeUpstream, ahead: str, hours: int = 3, keys: int = 50) -> tuple[float, list[float]]:
    """(share of requests after each key's first that called upstream, answer times of those requests)."""
    with Simulated(fake) as sim:
        service = sim.service(POWERBI_REFRESH_AHEAD_MINUTES=ahead)
        waited, times = 0, []
        for tick in range(hours * 3600 // 30):
            for user in range(keys):
                sim.at(tick * 30 + user * 0.5)
                _, called, elapsed, _ = ask(sim, service, user)
                sim.background()
                if tick:
                    waited, times = waited + called, [*times, elapsed]
        return waited / len(times), times


def outage_run(fake: FakeUpstream, keys: int = 50) -> tuple[int, int, int, int]:
    """Two hours, Power BI answering 503 from 60 to 90 minutes: (requests in the outage whose key held a token
    valid for 2 more minutes, of those answered 200, 5xx answers in the outage, Power BI calls in it)."""
    with Simulated(fake) as sim:
        service = sim.service()
        valid, served, errors, left = 0, 0, 0, dict.fromkeys(range(keys), 0.0)
        for tick in range(2 * 3600 // 30):
            if tick == 120:
                fake.fault("*", "/v1.0/", status=503, times=10**9, headers={"Retry-After": "30"})
                before = len(fake.calls(path_contains="/v1.0/"))
            if tick == 180:
                fake.clear_faults()
                sim.delay()
                calls = len(fake.calls(path_contains="/v1.0/")) - before
            for user in range(keys):
                sim.at(tick * 30 + user * 0.5)
                held = left[user] - 30  # what its last answer had left, 30 s ago
                status, _, _, left[user] = ask(sim, service, user)
                sim.background()
                if 120 <= tick < 180:
                    valid += held >= 120
                    served += held >= 120 and status == 200
                    errors += status >= 500
        return valid, served, errors, calls


def budget_run(fake: FakeUpstream) -> tuple[int, int]:
    """63 subsets of 6 reports in one minute, POWERBI_MAX_NEW_TOKENS_PER_MINUTE=10: (GenerateToken, 429s)."""
    reports = [REPORT_ID, *publish(fake, 5)]
    with Simulated(fake) as sim:
        service = sim.service(POWERBI_MAX_NEW_TOKENS_PER_MINUTE="10")
        refused = 0
        for n, subset in enumerate(s for k in range(1, 7) for s in itertools.combinations(reports, k)):
            sim.at(n * 0.9)
            try:
                service.embed("reports", list(subset))
            except Throttled:
                refused += 1
        return len(fake.calls("POST", "GenerateToken")), refused


def issue17_figures(fake: FakeUpstream) -> None:
    print("nobody waits (simulated clock, each Power BI call 200 ms):")
    for label, ahead in (("refresh ahead 10 min", "10"), ("refresh ahead off   ", "0")):
        started = time.perf_counter()
        share, times = refresh_ahead_run(fake, ahead)
        times.sort()
        print(
            f"  3 h, 50 keys every 30 s, {label}: {share:.2%} of {len(times):,} requests after each key's first "
            f"waited for an upstream call; answer p50 {times[len(times) // 2] * 1000:.2f} ms, "
            f"p99 {times[int(len(times) * 0.99)] * 1000:.2f} ms ({time.perf_counter() - started:.0f} s to run)"
        )
    valid, served, errors, calls = outage_run(fake)
    print(
        f"  Power BI 503 for 30 min after 1 h (50 keys every 30 s): {served:,} of {valid:,} requests whose token "
        f"was still valid answered 200; {errors:,} answers 5xx; {calls:,} Power BI calls in the 30 minutes"
    )
    minted, refused = budget_run(fake)
    print(f"  63 subsets of 6 reports in a minute, budget 10: {minted} GenerateToken, {refused} answers 429")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hits"]:
        hits_run()
    elif sys.argv[1:2] == ["--users"]:
        rss_run(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--customers-run"]:
        customers_run(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--customers"]:
        customers_figures()
    elif sys.argv[1:2] == ["--issue17"]:
        with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
            ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
            os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
            issue17_figures(fake)
    else:
        main()

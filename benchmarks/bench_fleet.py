"""Figures for the fleet: the shared cache across processes, and the worker's thread pool. Prints, asserts nothing.

    python benchmarks/bench_fleet.py      (needs Debian's redis-server)

With the emulator adding 200 ms to every Power BI call, several function processes
(``python -m emulator.host``) on one redis-server, with and without the shared cache:

- 4 processes x 64 concurrent cold requests for one report: GenerateToken calls, slowest answer;
- 1,000 requests spread over 4 processes for 50 (report, user) keys: Power BI calls;
- a cache hit from Redis (L2, a fresh process's first request) vs from the process (L1), per request;

and, with 500 ms per Power BI call, one process, 64 distinct cold keys at once (64 users on a
row-level-security report): wall time with the Python worker's default thread pool on 2 cores
(6 threads) and with the count deploy/deploy.sh sets.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator import (  # noqa: E402
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITY_REPORT_ID,
    REPORT_ID,
    TENANT_ID,
    WORKSPACE_ID,
    FakeUpstream,
)
from shared.embed import EmbedService  # noqa: E402
from shared.identity import Identity  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.test_fleet import Instance  # noqa: E402

KEY = base64.b64encode(os.urandom(32)).decode()
REDIS_PASSWORD = os.urandom(12).hex()

DEFAULT_THREADS = min(32, 2 + 4)  # the worker's default on a 2-core instance


def deployed_thread_count() -> int:
    """PYTHON_THREADPOOL_THREAD_COUNT as deploy/deploy.sh sets it."""
    match = re.search(r"^readonly THREAD_COUNT=(\d+)$", (ROOT / "deploy" / "deploy.sh").read_text(), re.M)
    assert match, "deploy.sh sets no THREAD_COUNT"
    return int(match.group(1))


def service_principal(fake: FakeUpstream) -> dict[str, str]:
    return {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": CLIENT_SECRET,
        "POWERBI_AUTHORITY_HOST": fake.base_url,
        "POWERBI_API_URL": fake.base_url,
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        "POWERBI_REQUEST_DEADLINE_SECONDS": "60",
    }


def cold_keys_wall_time(fake: FakeUpstream, threads: int, keys: int = 64) -> tuple[float, int]:
    """Seconds until ``keys`` distinct cold requests, queued at once on ``threads`` threads, are all answered."""
    service = EmbedService.create(Settings.from_env(service_principal(fake)))
    service.tokens.token(0)  # signed in already: the figure is about Power BI calls
    fake.reset_records()
    users = [Identity(f"user{n}@contoso.com") for n in range(keys)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda user: service.embed("report", IDENTITY_REPORT_ID, None, None, user), users))
    return time.perf_counter() - started, len(fake.calls("POST", "GenerateToken"))


def start_instances(
    fake: FakeUpstream, tmp: Path, stack: ExitStack, count: int, redis_url: str | None, **extra: str
) -> list[Instance]:
    values = {**service_principal(fake), "POWERBI_HTTP_AUTH_LEVEL": "anonymous", **extra}
    if redis_url:
        values |= {"POWERBI_CACHE_URL": redis_url, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    instances = []
    for _ in range(count):
        path = tmp / f"settings-{len(list(tmp.glob('settings-*')))}.json"
        path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
        instance = Instance(path, tmp / "ca.pem")
        stack.callback(instance.stop)
        instances.append(instance)
    return instances


def timed_get(url: str, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    answer = requests.get(url, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def cold_rush(fake: FakeUpstream, tmp: Path, redis: RedisServer, shared: bool) -> str:
    """4 processes x 64 concurrent cold requests for one report."""
    redis.cli("FLUSHALL")
    with ExitStack() as stack:
        instances = start_instances(fake, tmp, stack, 4, redis.url if shared else None)
        fake.reset_records()
        path = f"/api/embed/reports/{REPORT_ID}"
        urls = [i.url + path for i in instances for _ in range(64)]
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            times = list(pool.map(timed_get, urls))
    return f"{len(fake.calls('POST', 'GenerateToken'))} GenerateToken, slowest answer {max(times):.2f} s"


def spread(fake: FakeUpstream, tmp: Path, redis: RedisServer, shared: bool) -> str:
    """1,000 requests over 4 processes for 50 (report, user) keys (row-level security: a token per user)."""
    redis.cli("FLUSHALL")
    rls = {"POWERBI_RLS_USERNAME_SOURCE": "principal", "WEBSITE_AUTH_ENABLED": "True"}
    with ExitStack() as stack:
        instances = start_instances(fake, tmp, stack, 4, redis.url if shared else None, **rls)
        fake.reset_records()
        path = f"/api/embed/reports/{IDENTITY_REPORT_ID}"
        pick = random.Random(11)  # noqa: S311 - a load balancer spreading users over the instances
        idp = {"X-MS-CLIENT-PRINCIPAL-IDP": "aad"}
        jobs = [
            (
                pick.choice(instances).url + path,
                {"X-MS-CLIENT-PRINCIPAL-NAME": f"user{pick.randrange(50)}@x.com", **idp},
            )
            for _ in range(1000)
        ]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda job: timed_get(*job), jobs))
    powerbi = [r for r in fake.requests if "/v1.0/myorg/" in r.path]
    minted = len(fake.calls("POST", "GenerateToken"))
    return f"{len(powerbi)} Power BI calls ({minted} GenerateToken), {len(fake.token_calls)} sign-ins"


def hit_costs(fake: FakeUpstream, redis: RedisServer) -> str:
    """Per request: a hit in the process (L1) vs a hit in Redis (L2: a fresh process's first request)."""
    redis.cli("FLUSHALL")
    values = {**service_principal(fake), "POWERBI_CACHE_URL": redis.url, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    settings = Settings.from_env(values)
    first = EmbedService.create(settings)
    first.embed("report", REPORT_ID)
    l1 = []
    for _ in range(200):
        started = time.perf_counter()
        first.embed("report", REPORT_ID)
        l1.append(time.perf_counter() - started)
    fake.reset_records()
    l2 = []
    for _ in range(100):
        fresh = EmbedService.create(settings)  # a new instance: empty in-process caches
        started = time.perf_counter()
        fresh.embed("report", REPORT_ID)
        l2.append(time.perf_counter() - started)
    calls = len(fake.requests)
    return (
        f"L1 (process) median {statistics.median(l1) * 1e6:.0f} us; "
        f"L2 (Redis: token and catalog) median {statistics.median(l2) * 1e3:.2f} ms, {calls} upstream calls"
    )


def main() -> None:
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ca = str(fake.write_ca_pem(tmp / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        redis = RedisServer(tmp, password=REDIS_PASSWORD).start()
        try:
            fake.latency = 0.2
            print("with 200 ms per Power BI call, on one redis-server:")
            for shared in (False, True):
                label = "with the shared cache   " if shared else "without the shared cache"
                figures = cold_rush(fake, tmp, redis, shared)
                print(f"  4 processes x 64 cold requests, one report, {label}: {figures}")
            for shared in (False, True):
                label = "with the shared cache   " if shared else "without the shared cache"
                figures = spread(fake, tmp, redis, shared)
                print(f"  1,000 requests, 4 processes, 50 (report, user) keys, {label}: {figures}")
            fake.latency = 0.0
            print(f"  cache hit: {hit_costs(fake, redis)}")
        finally:
            redis.stop()
        fake.latency = 0.5
        print("one process, 64 distinct cold keys at once, 500 ms per Power BI call:")
        for threads in (DEFAULT_THREADS, 16, deployed_thread_count()):
            wall, minted = cold_keys_wall_time(fake, threads)
            print(f"  {threads:>2} threads: {wall:5.2f} s wall, {minted} GenerateToken")


if __name__ == "__main__":
    main()

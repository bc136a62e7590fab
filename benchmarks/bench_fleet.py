"""Figures for the fleet: the shared cache across processes, and the worker's thread pool. Prints, asserts nothing.

    python benchmarks/bench_fleet.py

- one process, 64 distinct cold keys at once (64 users on a row-level-security report), the
  emulator adding 500 ms to every Power BI call: wall time with the Python worker's default
  thread pool on 2 cores (6 threads) and with the count deploy/deploy.sh sets.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator import CLIENT_ID, CLIENT_SECRET, IDENTITY_REPORT_ID, TENANT_ID, WORKSPACE_ID, FakeUpstream  # noqa: E402
from shared.embed import EmbedService  # noqa: E402
from shared.identity import Identity  # noqa: E402
from shared.settings import Settings  # noqa: E402

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


def main() -> None:
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        fake.latency = 0.5
        print("one process, 64 distinct cold keys at once, 500 ms per Power BI call:")
        for threads in (DEFAULT_THREADS, 16, deployed_thread_count()):
            wall, minted = cold_keys_wall_time(fake, threads)
            print(f"  {threads:>2} threads: {wall:5.2f} s wall, {minted} GenerateToken")


if __name__ == "__main__":
    main()

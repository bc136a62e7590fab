"""Figures for the function's speed targets; prints them, asserts nothing (targets live here, not in tests).

    python benchmarks/bench.py

- import time of ``function_app`` beside that of its three runtime packages (fresh
  interpreters, median of several runs);
- upstream calls for 100 requests to one report in one process, against the fake;
- time per request on a cache hit and on a cold start, through the registered route;
- upstream calls for 32 concurrent cold requests;
- peak Python memory for 10,000 cached requests.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import function_app  # noqa: E402
from emulator import (  # noqa: E402
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    REPORT_ID,
    TENANT_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator.entra import emulator_session  # noqa: E402
from emulator.host import FunctionRoutes  # noqa: E402
from shared.embed import EmbedService  # noqa: E402
from shared.settings import Settings  # noqa: E402


def import_seconds(runs: int = 7) -> tuple[float, float]:
    """Median seconds, in fresh interpreters: the three runtime packages, then function_app on top of them."""
    code = (
        "import time; t = time.perf_counter(); import azure.functions, msal, requests; "
        "a = time.perf_counter(); import function_app; print(a - t, time.perf_counter() - a)"
    )
    runs_out = [
        subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).split()  # noqa: S603
        for _ in range(runs)
    ]
    return statistics.median(float(r[0]) for r in runs_out), statistics.median(float(r[1]) for r in runs_out)


def settings(fake: FakeUpstream) -> Settings:
    return Settings.from_env(
        {
            "POWERBI_TENANT_ID": TENANT_ID,
            "POWERBI_CLIENT_ID": CLIENT_ID,
            "POWERBI_CLIENT_SECRET": CLIENT_SECRET,
            "POWERBI_USERNAME": USERNAME,
            "POWERBI_PASSWORD": PASSWORD,
            "POWERBI_AUTHORITY_HOST": fake.base_url,
            "POWERBI_API_URL": fake.base_url,
            "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        }
    )


def main() -> None:
    packages, ours = import_seconds()
    print(f"import azure.functions + msal + requests: {packages * 1000:.0f} ms (median of 7 fresh interpreters)")
    print(f"import function_app on top of them:       {ours * 1000:.0f} ms more ({ours / packages:.0%})")

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


def _kinds(fake: FakeUpstream) -> list[str]:
    return [f"{r.method} {r.path.split('/')[-1] or r.path}" for r in fake.requests]


if __name__ == "__main__":
    main()

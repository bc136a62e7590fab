"""What callers get while Entra ID's token endpoint answers 503 for 5 seconds (real time, real MSAL).

32 clients ask for one report at once (then, in a second run, one every 156 ms over the outage),
through the app's routes in-process (each on its own thread, as the worker's pool would run them),
against the emulator whose token endpoint answers 503 from t=0 to t=5 s. Each client that gets a
503 waits the Retry-After it was given and asks again, until it gets a token. Prints what the first
answers were (statuses, codes, Retry-After values, when), how many token-endpoint calls the whole
outage cost, and when the clients got their tokens.

    python benchmarks/outage.py
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
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
from emulator.entra import emulator_session, entra_unavailable  # noqa: E402
from emulator.host import FunctionRoutes  # noqa: E402
from shared.embed import EmbedService  # noqa: E402
from shared.settings import Settings  # noqa: E402

CLIENTS = 32
OUTAGE_SECONDS = 5.0


@dataclass(frozen=True)
class Answer:
    at: float  # seconds since the outage began, when the answer came
    status: int
    code: str
    retry_after: str | None


def main() -> None:
    logging.getLogger("shared").setLevel(logging.ERROR)  # one warning per 503 answered: not the figures
    for stagger in (False, True):
        run(stagger)


def run(stagger: bool) -> None:
    """All clients at once, or (``stagger``) one every OUTAGE_SECONDS / CLIENTS over the outage."""
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        ca = str(fake.write_ca_pem(Path(tmp) / "ca.pem"))
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = ca
        settings = Settings.from_env(
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
        function_app.use_service(EmbedService.create(settings, session=emulator_session(fake.base_url)))
        routes = FunctionRoutes(function_app.app)

        entra_unavailable(fake, status=503, times=10**9)  # every token request, until cleared
        start = time.monotonic()
        end_of_outage = threading.Timer(OUTAGE_SECONDS, fake.clear_faults)
        end_of_outage.start()
        answers: list[list[Answer]] = [[] for _ in range(CLIENTS)]
        go = threading.Barrier(CLIENTS)

        def client(n: int) -> None:
            go.wait()
            if stagger:
                time.sleep(n * OUTAGE_SECONDS / CLIENTS)
            while True:
                response = routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}")
                body = json.loads(response.get_body())
                code = body["error"]["code"] if "error" in body else "ok"
                retry_after = response.headers.get("Retry-After")
                answers[n].append(Answer(time.monotonic() - start, response.status_code, code, retry_after))
                if response.status_code == 200 or len(answers[n]) > 20:
                    return
                time.sleep(float(retry_after or 1))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end_of_outage.cancel()

        first = [a[0] for a in answers]
        token_calls = fake.token_calls
        when = f"one every {OUTAGE_SECONDS / CLIENTS * 1000:.0f} ms" if stagger else "at once"
        print(
            f"{CLIENTS} requests for one report ({when}); Entra's token endpoint answers 503 for {OUTAGE_SECONDS:g} s"
        )
        print(
            "  first wave: "
            + ", ".join(
                f"{n} x {s} {c} (Retry-After {r})"
                for (s, c, r), n in Counter((a.status, a.code, a.retry_after) for a in first).items()
            )
        )
        print(f"  first wave answered between {min(a.at for a in first):.2f} s and {max(a.at for a in first):.2f} s")
        attempts = Counter(len(a) for a in answers)
        print(
            "  requests per client until a token: "
            + ", ".join(f"{k}: {v} clients" for k, v in sorted(attempts.items()))
        )
        got = [a[-1] for a in answers]
        print(
            f"  all {sum(a.status == 200 for a in got)} got a token, between {min(a.at for a in got):.2f} s and "
            f"{max(a.at for a in got):.2f} s"
        )
        print(
            f"  token-endpoint calls: {len(token_calls)} in all, "
            f"500s answered: {sum(a.status == 500 for r in answers for a in r)}, "
            f"502 sign_in_failed: {sum(a.code == 'sign_in_failed' for r in answers for a in r)}"
        )
        print(f"  GenerateToken calls: {len(fake.calls('POST', 'GenerateToken'))}")
        function_app.use_service(None)


if __name__ == "__main__":
    main()

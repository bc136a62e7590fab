"""The local demo behind the Static Web Apps CLI (``make demo-swa``): emulator, function, SWA CLI, until Ctrl-C.

Like ``make demo`` (scripts/demo.py, whose helpers it uses), but the page is served by the SWA CLI
(``@azure/static-web-apps-cli`` from web/node_modules) on its own port, which proxies ``/api/*`` to the function
on :7071 and emulates sign-in at ``/.auth/login/<provider>``, forwarding the user as ``x-ms-client-principal``
in SWA's format. Row-level security is on: the function takes the username and roles from that principal.

LOCAL ONLY: ``WEBSITE_AUTH_ENABLED=true`` is set here to stand in for the function app's own authentication,
which in Azure is what makes the principal trustworthy. The SWA CLI forwards whatever principal a caller sends
when it has no sign-in cookie, so this profile must never be used outside this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo import CA, EMULATOR_PORT, HOST_PORT, SERVICES, ProcessGroup, Service, answers, port_free  # noqa: E402

from emulator import RLS_REPORT_ID, RLS_ROLES  # noqa: E402
from emulator.host import stop_on_signals  # noqa: E402

SWA_PORT = 4280  # the SWA CLI's default
SWA = ROOT / "web" / "node_modules" / ".bin" / "swa"
READY_SECONDS = 90.0

# Added to the emulator profile (emulator/profile.json) for this demo: RLS from SWA's principal.
RLS_PROFILE = {
    "POWERBI_HTTP_AUTH_LEVEL": "anonymous",  # the site forwards /api/*; no function key in a page
    "POWERBI_RLS_USERNAME_SOURCE": "principal",
    "POWERBI_RLS_ROLES_SOURCE": "principal",
    "POWERBI_RLS_ALLOWED_ROLES": ",".join(RLS_ROLES),
    "WEBSITE_AUTH_ENABLED": "true",  # LOCAL ONLY: see the module's docstring
}


def swa_command() -> list[str]:
    return [
        str(SWA),
        "start",
        str(ROOT / "web"),
        "--api-devserver-url",
        f"http://127.0.0.1:{HOST_PORT}",
        "--port",
        str(SWA_PORT),
        "--host",
        "127.0.0.1",
    ]


def banner() -> str:
    page = f"http://127.0.0.1:{SWA_PORT}"
    roles = ", ".join(RLS_ROLES)
    return f"""
The SWA demo is running. Ctrl-C stops it.

  page       {page}/?api=/api&id={RLS_REPORT_ID}    (row-level security: sign in first)
  sign in    {page}/.auth/login/aad    the CLI's emulated login: a username (e.g. ana@contoso.com)
             and roles, one per line (e.g. {roles}); then open the page
  function   http://127.0.0.1:{HOST_PORT}/api    (RLS from the SWA principal; WEBSITE_AUTH_ENABLED=true, LOCAL ONLY)
  emulator   https://localhost:{EMULATOR_PORT}

The emulated sign-in page loads jQuery from a CDN; offline, its form does nothing (see docs/static-web-apps.md).
"""


def main() -> int:
    ports = [*(s.port for s in SERVICES if s.name != "web"), SWA_PORT]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        print(f"demo-swa: port(s) {', '.join(map(str, busy))} in use. Is another demo running? Stop it and retry.")
        return 1
    if not SWA.exists():
        print(f"demo-swa: {SWA} is missing: run `npm ci --ignore-scripts` in web/ (make setup does).")
        return 1
    interrupted = stop_on_signals()
    CA.parent.mkdir(exist_ok=True)
    CA.unlink(missing_ok=True)
    env = {**os.environ, **RLS_PROFILE}
    steps: list[tuple[str, list[str], str]] = [
        (s.name, [sys.executable, *s.args], s.ready_url) for s in SERVICES if isinstance(s, Service) and s.name != "web"
    ]
    steps.append(("swa", swa_command(), f"http://127.0.0.1:{SWA_PORT}/embed.js"))
    group = ProcessGroup()  # the services end with this launcher, however it ends
    try:
        for name, command, ready in steps:
            process = group.start(name, command, env)
            if not wait_ready(name, process, ready, interrupted.is_set):
                return 0 if interrupted.is_set() else 1
        print(banner(), flush=True)
        while not interrupted.wait(0.5):
            for (name, _, _), process in zip(steps, group.processes, strict=True):
                if process.poll() is not None:
                    print(f"demo-swa: the {name} stopped (exit code {process.returncode}); stopping the rest.")
                    return 1
        return 0
    finally:
        print("demo-swa: stopping…", flush=True)
        group.stop()
        print("demo-swa: stopped.", flush=True)


def wait_ready(name: str, process: subprocess.Popen[str], url: str, stopping: object) -> bool:
    import time

    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and not stopping():  # type: ignore[operator]
        if process.poll() is not None:
            print(f"demo-swa: the {name} exited with code {process.returncode} before it was ready.")
            return False
        if answers(url):
            return True
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())

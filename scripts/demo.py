"""The one-command demo (``make demo``): the emulator, the function and the web sample, until Ctrl-C.

Starts three processes from the repository root, in one process group of their own (led by
scripts/demo_guard.py) so that Ctrl-C reaches only this launcher, which then stops them in reverse order:

1. ``python -m emulator.server``: fake Entra ID + Power BI over HTTPS on 8443, its CA in .emulator/ca.pem;
2. ``python -m emulator.host --emulator``: the function app on 7071 with the emulator profile;
3. ``python -m http.server``: web/ on 8080, another origin than the function's, so CORS is exercised.

Each is polled until it answers, then the URLs to open and a ``curl`` line that gets a token are printed.
Their output is shown prefixed with their name. However the launcher ends (Ctrl-C, an error, SIGKILL, a closed
terminal), the guard then ends whatever of the group is left, so the ports are free for the next run.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator import DASHBOARD_ID, REPORT_ID, TENANT_ID  # noqa: E402 - the emulator's default catalogue
from emulator.host import stop_on_signals  # noqa: E402

CA = ROOT / ".emulator" / "ca.pem"  # where emulator/profile.json expects it
EMULATOR_PORT, HOST_PORT, WEB_PORT = 8443, 7071, 8080
READY_SECONDS = 60.0


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    args: tuple[str, ...]
    ready_url: str


SERVICES = (
    Service(
        "emulator",
        EMULATOR_PORT,
        ("-m", "emulator.server", "--port", str(EMULATOR_PORT), "--ca-pem", str(CA)),
        f"https://localhost:{EMULATOR_PORT}/{TENANT_ID}/v2.0/.well-known/openid-configuration",
    ),
    Service("host", HOST_PORT, ("-m", "emulator.host", "--emulator"), f"http://127.0.0.1:{HOST_PORT}/api/health"),
    Service(
        "web",
        WEB_PORT,
        ("-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1", "--directory", str(ROOT / "web")),
        f"http://127.0.0.1:{WEB_PORT}/index.html",
    ),
)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(url: str) -> bool:
    """Does ``url`` answer 200? The emulator's URL must also present a certificate from the current CA."""
    try:
        context = ssl.create_default_context(cafile=str(CA)) if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - our own URLs
            return bool(response.status == 200)
    except (OSError, ssl.SSLError):
        return False


def pump(name: str, stream: object) -> None:
    """Copy a child's output to ours, each line prefixed with its name."""
    for line in stream:  # type: ignore[attr-defined]
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()


class ProcessGroup:
    """The demo's processes, in one process group that does not outlive the launcher.

    Its leader is scripts/demo_guard.py, which waits for its standard input (a pipe only this process writes
    to) to close, that is for this launcher to end, however it ends, and then ends the whole group. The group
    is a new one in the launcher's session: Ctrl-C at the terminal reaches the launcher only.
    """

    def __init__(self) -> None:
        self.guard = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, str(ROOT / "scripts" / "demo_guard.py")], stdin=subprocess.PIPE, process_group=0
        )
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, the pinned CLI, fixed arguments
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=self.guard.pid,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=pump, args=(name, process.stdout), daemon=True).start()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM to each process, newest first, then SIGKILL after 10 s; then the guard sweeps the group
        (what the processes started themselves, such as the SWA CLI's server).

        Not SIGINT: a process started with SIGINT ignored (``make demo &`` from a script) passes that on.
        """
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert self.guard.stdin is not None
        self.guard.stdin.close()
        self.guard.wait(timeout=30)


def wait_ready(service: Service, process: subprocess.Popen[str], stopping: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and not stopping():
        if process.poll() is not None:
            print(f"demo: the {service.name} exited with code {process.returncode} before it was ready.")
            return False
        if answers(service.ready_url):
            return True
        time.sleep(0.2)
    if not stopping():
        print(f"demo: the {service.name} did not answer {service.ready_url} within {READY_SECONDS:.0f} s.")
    return False


def telemetry_note(env: dict[str, str]) -> str:
    """Where the function's telemetry goes: the host inherits this environment, OTEL_* included."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint:
        return "  telemetry       off (set OTEL_EXPORTER_OTLP_ENDPOINT to send it to an OTLP/HTTP backend)\n"
    service = env.get("OTEL_SERVICE_NAME", "").strip() or "powerbi-embed"
    return f"  telemetry       traces, metrics and logs over OTLP/HTTP to {endpoint} (service {service})\n"


def banner() -> str:
    page, api = f"http://127.0.0.1:{WEB_PORT}", f"http://127.0.0.1:{HOST_PORT}/api"
    return f"""
The demo is running. Ctrl-C stops it.

  report page     {page}/?id={REPORT_ID}
  dashboard page  {page}/?type=dashboard&id={DASHBOARD_ID}
  function        {api}/health    (the local host, emulator profile)
  emulator        https://localhost:{EMULATOR_PORT}    (fake Entra ID + Power BI; CA in {CA.relative_to(ROOT)})
{telemetry_note(dict(os.environ))}
Get a token:

  curl -s {api}/embed/reports/{REPORT_ID}

The page gets its token from the function and hands it to powerbi-client; the frame then asks
app.powerbi.com, which does not know the emulator's tokens, so it shows Power BI's own error
(or nothing, offline). The browser test (tests/test_browser.py) puts a fake embed page there.
"""


def main() -> int:
    busy = [s for s in SERVICES if not port_free(s.port)]
    if busy:
        names = ", ".join(f"{s.port} ({s.name})" for s in busy)
        print(f"demo: port {names} is in use. Is another demo (or func start) running? Stop it and try again.")
        return 1
    interrupted = stop_on_signals()
    CA.parent.mkdir(exist_ok=True)
    CA.unlink(missing_ok=True)  # a CA left by an earlier run would not match the new emulator's certificate
    group = ProcessGroup()
    try:
        for service in SERVICES:
            process = group.start(service.name, [sys.executable, *service.args], dict(os.environ))
            if not wait_ready(service, process, interrupted.is_set):
                return 0 if interrupted.is_set() else 1
        print(banner(), flush=True)
        while not interrupted.wait(0.5):
            for service, process in zip(SERVICES, group.processes, strict=True):
                if process.poll() is not None:
                    print(f"demo: the {service.name} stopped (exit code {process.returncode}); stopping the rest.")
                    return 1
        return 0
    finally:
        print("demo: stopping…", flush=True)
        group.stop()
        print("demo: stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())

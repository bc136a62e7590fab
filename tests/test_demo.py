"""``make demo``'s and ``make demo-swa``'s launchers (scripts/demo.py, demo_swa.py) take their services with
them, however they end.

The launcher runs as ``make demo`` runs it; once it says the demo is running, it is killed with SIGKILL
(what a closed terminal or ``kill -9`` does; it can catch nothing), and the emulator's, the host's and the
web server's ports (the SWA CLI's, whose server is a child of the CLI, for demo-swa) must be free again
within a few seconds, so the next demo starts.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from demo import SERVICES, port_free  # noqa: E402
from demo_swa import SWA_PORT  # noqa: E402

READY_SECONDS = 120.0  # a bound on the demo's start (three processes, a new CA), not a wait
FREE_SECONDS = 10.0  # "within a few seconds": the guard's SIGTERM, and its SIGKILL after 5 s at worst


def processes_with(marker: str) -> list[int]:
    """Every process whose environment holds ``marker`` (the launcher's children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """An environment variable for the demo's processes; whatever still has it afterwards is killed."""
    value = f"DEMO_TEST_RUN={uuid.uuid4()}"
    yield value
    for pid in processes_with(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_banner(launcher: subprocess.Popen[bytes], banner: bytes) -> bytes:
    assert launcher.stdout is not None
    output = b""
    deadline = time.monotonic() + READY_SECONDS
    while banner not in output:
        remaining = deadline - time.monotonic()
        assert remaining > 0, output.decode(errors="replace")[-2000:]
        ready, _, _ = select.select([launcher.stdout], [], [], remaining)
        chunk = os.read(launcher.stdout.fileno(), 65536) if ready else b""
        assert chunk or launcher.poll() is None, output.decode(errors="replace")[-2000:]
        output += chunk
    return output


DEMOS = {
    "demo": ("demo.py", [service.port for service in SERVICES], b"The demo is running"),
    "demo-swa": (
        "demo_swa.py",
        [*(service.port for service in SERVICES if service.name != "web"), SWA_PORT],
        b"The SWA demo is running",
    ),
}


@pytest.mark.parametrize("demo", list(DEMOS))
def test_killing_the_launcher_frees_the_three_ports(marker: str, demo: str) -> None:
    script, ports, banner = DEMOS[demo]
    if demo == "demo-swa" and not (ROOT / "web" / "node_modules" / ".bin" / "swa").exists():
        pytest.skip("the SWA CLI is not installed: npm ci --ignore-scripts in web/")
    assert all(map(port_free, ports)), f"a port of the demo ({ports}) is already in use"
    name, _, value = marker.partition("=")
    launcher = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(ROOT / "scripts" / script)],
        cwd=ROOT,
        env={**os.environ, name: value},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_banner(launcher, banner)
        assert not any(map(port_free, ports))  # all three are serving

        launcher.kill()  # SIGKILL: nothing in the launcher runs any more
        launcher.wait(timeout=10)

        deadline = time.monotonic() + FREE_SECONDS
        while not all(map(port_free, ports)) and time.monotonic() < deadline:
            time.sleep(0.1)  # a poll, bounded by the deadline
        assert [port for port in ports if not port_free(port)] == []
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)  # the guard itself, the last to go
        assert processes_with(marker) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        if launcher.stdout is not None:
            launcher.stdout.close()

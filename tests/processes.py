"""Test servers run as processes (redis-server, Azurite): started until they say they listen, stopped after."""

from __future__ import annotations

import subprocess
from pathlib import Path

STOP_TIMEOUT = 30.0  # seconds: a bound on a server's stop, not a wait


def start_server(argv: list[str], ready: str, name: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Run ``argv`` and return once a line of its output contains ``ready`` (a server says when it listens:
    reading that beats polling its port); raise with its last lines if it ends first."""
    process = subprocess.Popen(  # noqa: S603 - the tests' own arguments
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if ready in line:
            return process
    stop_server(process)
    raise RuntimeError(f"{name} did not start: " + "".join(seen[-5:]))


def stop_server(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=STOP_TIMEOUT)
    if process.stdout:
        process.stdout.close()

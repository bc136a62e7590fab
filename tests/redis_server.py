"""A real redis-server for the tests: Debian's, on a free loopback port, nothing written to disk.

Tests that need one skip, saying how to install it, when ``redis-server`` is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.processes import start_server, stop_server

INSTALL_HINT = "redis-server is not installed: apt-get install -y redis-server (Debian's package)"
CLI_TIMEOUT = 10.0  # seconds: a bound on a redis-cli call, not a wait


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(INSTALL_HINT)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep the port (and lose the data)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--enable-debug-command", "local"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = start_server(argv, "Ready to accept connections", "redis-server")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None

    def cli(self, *args: str) -> str:
        """redis-cli against this server (as an operator would dump it)."""
        binary = shutil.which("redis-cli") or "redis-cli"
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        result = subprocess.run(  # noqa: S603
            [binary, "-h", "127.0.0.1", "-p", str(self.port), *auth, *args],
            capture_output=True,
            timeout=CLI_TIMEOUT,
            check=True,
        )
        return result.stdout.decode("latin-1")


class SlowProxy:
    """A TCP proxy in front of a server that holds every answer back ``delay`` seconds: a Redis answering late."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __enter__(self) -> SlowProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        with source, sink:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                # The slowness being simulated: the server's answer arrives late.
                self.stopped.wait(delay)
                try:
                    sink.sendall(data)
                except OSError:
                    return

"""A real Azurite (the Azure Storage emulator) table service for the tests and the figures.

The npm package ``azurite`` is a pinned dev dependency of ``web/`` (``npm ci --ignore-scripts`` there
installs it). It runs on a free loopback port of its own, in memory (nothing written to disk), without
telemetry, and is stopped after. Tests that need it skip, saying how to install it, when it is missing.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.processes import start_server, stop_server
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "web" / "node_modules" / ".bin" / "azurite-table"
INSTALL_HINT = "Azurite is not installed: cd web && npm ci --ignore-scripts (the pinned dev dependency)"
# Azurite's well-known development account (public, in Microsoft's documentation): not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> Path:
    if not BINARY.exists():
        pytest.skip(INSTALL_HINT)
    return BINARY


class AzuriteTables:
    """One ``azurite-table`` process; ``stop()`` and ``start()`` again keep the port (and lose the data)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = azurite_binary()
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """What ``UseDevelopmentStorage=true`` stands for, on this instance's own port."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.endpoint};"
        )

    def start(self) -> AzuriteTables:
        argv = [str(self.binary), "--tableHost", "127.0.0.1", "--tablePort", str(self.port)]
        argv += ["--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--silent"]
        self.process = start_server(argv, "successfully started", "azurite-table", cwd=self.workdir)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None


class CountingTable:
    """A real ``TableClient`` whose point reads are counted (and, with ``delay``, held back): what the
    directory asked of the table. Everything is the real client's answer."""

    def __init__(self, table: Any, delay: float = 0.0) -> None:
        self.table = table
        self.delay = delay
        self.reads: list[str] = []
        self._lock = threading.Lock()

    def get_entity(self, partition_key: str, row_key: str) -> Any:
        with self._lock:
            self.reads.append(row_key)
        if self.delay:
            threading.Event().wait(self.delay)  # a slow table: concurrent readers overlap
        return self.table.get_entity(partition_key, row_key)

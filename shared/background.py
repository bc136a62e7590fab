"""Work done off the request path: a few threads and a short queue that drops, never blocks.

Refreshing a token ahead of its expiry must never delay an answer: ``submit`` only puts the job on
a bounded queue (dropping it, and saying so, when the queue is full) and returns at once. The threads
start on the first job (nothing at import or for an app that never refreshes) and are daemons: a
worker process that stops loses at most the refreshes in flight, which the next request re-asks.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

WORKERS = 2  # a refresh is one or two upstream calls: two at a time keep up with thousands of keys
QUEUE_SIZE = 64


class Background(Protocol):
    """Runs jobs off the request path (``BackgroundPool``; tests inject one they drive)."""

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``: False if it was dropped (never blocks, never raises)."""
        ...


class BackgroundPool:
    def __init__(self, workers: int = WORKERS, queue_size: int = QUEUE_SIZE) -> None:
        self._workers = workers
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[[], None]) -> bool:
        self._start()
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            logger.warning("background work dropped: %d jobs already queued", self._jobs.maxsize)
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self._workers:
                thread = threading.Thread(target=self._run, name=f"refresh-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job reports its own failures; this only keeps the thread alive
                logger.exception("background job failed")
            finally:
                self._jobs.task_done()

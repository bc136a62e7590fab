"""Bounded caches with expiry, an optional second level, and one upstream call per key at a time.

``TieredCache`` keeps at most ``maxsize`` values in process (cachetools' ``LRUCache``: past the bound
the least recently used goes first), each until its own expiry: an expired value is dropped when
met, never served. (cachetools' ``TLRUCache`` would also drop expired values unasked, but its
expiry heap keeps every evicted key until that key's expiry time comes up: under churn, such as a
new user per request, that is more memory than the values themselves.)

Behind it an optional ``SharedStore`` (a second level shared between workers, such as Redis) may
hold the same values as JSON-able dicts: a miss in process reads it, and a value made here is
written to both. ``get_or_load`` adds the single-flight: concurrent misses for one key wait for
one load; with a ``FleetStore`` (a lock in the store), concurrent misses on other workers wait for
that same load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from cachetools import LRUCache

from shared.clock import SYSTEM_CLOCK, Clock
from shared.errors import UpstreamTimeout

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedStore(Protocol):
    """A second cache level shared between processes; values are JSON-able dicts.

    Both calls must be quick and must not raise for a store that is down: a failure is a miss
    (``get`` answers None) or a value not shared (``put`` does nothing).
    """

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any], ttl_seconds: float) -> None: ...


@runtime_checkable
class FleetStore(SharedStore, Protocol):
    """A shared store that can also make one load for every worker at once (a lock in the store)."""

    def load_once(
        self, key: str, load: Callable[[], V], read: Callable[[], V | None], remaining: Callable[[], float]
    ) -> V:
        """``load()`` if this worker gets the store's lock for ``key``, else what another worker's load
        shared (``read()``), waiting for it within ``remaining()``; never raises for the store's sake."""
        ...


class Codec(Protocol[V]):
    """How a value travels to and from a shared store."""

    def to_json(self, value: V) -> dict[str, Any]: ...

    def from_json(self, data: dict[str, Any]) -> V: ...


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key run the work once; the others wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Future[V]] = {}

    def run(self, key: K, work: Callable[[], V], timeout: Callable[[], float]) -> tuple[V, bool]:
        """(the result, whether this call did the work)."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            try:
                return flight.result(timeout=max(0.0, timeout())), False
            except FutureTimeout:
                raise UpstreamTimeout(
                    "Power BI did not answer in time.", cause="waited too long for a concurrent request"
                ) from None
        try:
            flight.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiters, then re-raised below
            # Shared with the callers waiting now, not kept: the next request tries again.
            flight.set_exception(exc)
        finally:
            with self._lock:
                del self._flights[key]
        return flight.result(), True


class TieredCache(Generic[K, V]):
    """At most ``maxsize`` values in process, each until ``expires_at(value)`` (epoch seconds on the
    clock's ``now``), least recently used evicted first; optionally backed by a shared store."""

    def __init__(
        self,
        name: str,
        maxsize: int,
        expires_at: Callable[[V], float],
        *,
        clock: Clock = SYSTEM_CLOCK,
        store: SharedStore | None = None,
        codec: Codec[V] | None = None,
        key_text: Callable[[K], str] = str,
    ) -> None:
        if store is not None and codec is None:
            raise ValueError("a shared store needs a codec")
        self.name = name
        self._expires_at = expires_at
        self._clock = clock
        self._store = store
        self._codec = codec
        self._key_text = key_text
        # cachetools' caches are not thread-safe: the worker runs handlers on a thread pool.
        self._lock = threading.Lock()
        self._values: LRUCache[K, tuple[float, V]] = LRUCache(maxsize)
        self._flights: SingleFlight[K, V] = SingleFlight()

    def __len__(self) -> int:
        """Values kept that have not expired (drops the expired: for tests and figures, not the hot path)."""
        now = self._clock.now()
        with self._lock:
            for key in [k for k, (expires, _) in self._values.items() if expires <= now]:
                del self._values[key]
            return len(self._values)

    def local(self, key: K) -> V | None:
        """The value if it is in process and has not expired (an expired one is dropped): no network call."""
        with self._lock:
            entry = self._values.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock.now():
                del self._values[key]
                return None
            return entry[1]

    def get(self, key: K) -> V | None:
        """The value if it has not expired: in process, else from the shared store (kept in process too)."""
        value = self.local(key)
        if value is not None:
            return value
        if self._store is None or self._codec is None:
            return None
        data = self._store.get(f"{self.name}:{self._key_text(key)}")
        if data is None:
            return None
        try:
            value = self._codec.from_json(data)
        except (KeyError, TypeError, ValueError):
            logger.warning("cache %s: unreadable shared entry ignored", self.name)
            return None
        expires = self._expires_at(value)
        if expires <= self._clock.now():
            return None
        with self._lock:
            self._values[key] = (expires, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` (not at all if it has already expired), and share it when there is a store."""
        expires = self._expires_at(value)
        ttl = expires - self._clock.now()
        if ttl <= 0:
            with self._lock:
                self._values.pop(key, None)
            return
        with self._lock:
            self._values[key] = (expires, value)
        if self._store is not None and self._codec is not None:
            self._store.put(f"{self.name}:{self._key_text(key)}", self._codec.to_json(value), ttl)

    def discard(self, key: K) -> None:
        with self._lock:
            self._values.pop(key, None)

    def get_or_load(self, key: K, load: Callable[[], V], timeout: Callable[[], float]) -> tuple[V, str]:
        """The cached value, or one load shared by concurrent callers.

        (value, outcome): "hit" (in process), "l2" (from the shared store, or another worker's load),
        "miss" (loaded here), or "shared" (another request's load in this process).
        """
        value = self.local(key)
        if value is not None:
            return value, "hit"
        outcome = ["l2"]  # unless found in process or loaded here, below

        def work() -> V:
            # A flight that ended just before this one started may have filled the cache; the shared
            # store is read here, by the one caller in flight, not by every concurrent miss.
            cached = self.local(key)
            if cached is not None:
                outcome[0] = "hit"
                return cached
            cached = self.get(key)
            if cached is not None:
                return cached

            def load_and_put() -> V:
                loaded = load()
                outcome[0] = "miss"
                self.put(key, loaded)
                return loaded

            if isinstance(self._store, FleetStore):
                # Other workers missing this key now wait for this one load instead of making their own.
                shared = self._store.load_once(
                    f"{self.name}:{self._key_text(key)}", load_and_put, lambda: self.get(key), timeout
                )
                return shared
            return load_and_put()

        value, leader = self._flights.run(key, work, timeout)
        return value, outcome[0] if leader else "shared"

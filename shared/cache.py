"""The one cache: a value by key, with expiry, made once for concurrent callers.

``Cache`` keeps at most ``maxsize`` entries in process (cachetools' ``LRUCache``: past the bound the
least recently used goes first), each with its own ``Lifetime`` computed from its value: handed out
until ``fresh_until``, kept no longer than ``keep_until``, and dropped when met past it, never served.
(cachetools' ``TLRUCache`` would also drop expired values unasked, but its expiry heap keeps every
evicted key until that key's expiry time comes up: under churn, such as a new user per request, that
is more memory than the values themselves.)

``get_or_load`` is the whole interface: the fresh value if there is one, else one ``load`` shared by
the concurrent callers of this process, and, with a ``SharedLevel`` (Redis, ``shared.shared_cache``),
one load for the whole fleet under its lock, the value then read from the shared level by the others.
A value travels to the shared level as JSON through the cache's ``Codec``.

What builds on it: a ``Lifetime`` already separates "hand out" from "keep", so a value can be
refreshed ahead of its expiry (``refresh_from``) or kept past its freshness for a load that fails
(``keep_until``); a value may itself mean "absent" (a ``V`` such as ``Customer | None``: the cache
never uses None as a miss); a load runs only in the one caller that found no usable entry, so a check
made at the start of ``load`` (a budget) runs before any upstream call and never on a hit; keys carry
whatever separates them (a tenant, a profile) in ``text()``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from cachetools import LRUCache

from shared.clock import SYSTEM_CLOCK, Clock
from shared.errors import UpstreamTimeout

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

# How a value was found, as the request's log line says it: "hit" (in process), "l2" (from the shared
# level, or another instance's load), "miss" (loaded here), "shared" (another request's load here).
Outcome = Literal["hit", "l2", "miss", "shared"]
Source = Literal["shared", "created"]  # from the shared level's ``once``: read there, or made here


class CacheKey(Protocol):
    """A cache key: hashable, and with a text that names it in the shared level (all of it: tenant,
    profile, user, whatever separates one value from another)."""

    def text(self) -> str: ...


K = TypeVar("K", bound=CacheKey)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """When a value stops being handed out (``fresh_until``) and when it stops being kept (``keep_until``,
    never before ``fresh_until``), in epoch seconds on the clock's ``now``."""

    fresh_until: float
    keep_until: float | None = None

    @property
    def end(self) -> float:
        return max(self.fresh_until, self.keep_until or 0.0)


@dataclass(frozen=True)
class Codec(Generic[V]):
    """How a value goes to the shared level (a JSON-able dict) and back; ``loads`` raises KeyError,
    TypeError or ValueError for what it cannot read."""

    dumps: Callable[[V], dict[str, Any]]
    loads: Callable[[dict[str, Any]], V]


class SharedLevel(Protocol):
    """A second level shared between processes (``shared.shared_cache.SharedCache``).

    None of its calls raises for the store's sake: a store that is away is a miss (``get``), a value
    not shared (``put``), or a load made without the others (``once``).
    """

    def get(self, kind: str, key: str) -> bytes | None: ...

    def put(self, kind: str, key: str, value: bytes, ttl_seconds: float) -> bool: ...

    def once(
        self,
        kind: str,
        key: str,
        create: Callable[[], T],
        read: Callable[[], T | None],
        remaining: Callable[[], float],
    ) -> tuple[T, Source]:
        """``create()`` under the fleet's lock for the key, or what another instance's create shared
        (``read()``), waiting for it within ``remaining()`` seconds."""
        ...


@dataclass(frozen=True, slots=True)  # one per cached value: no __dict__ each
class _Entry(Generic[V]):
    value: V
    lifetime: Lifetime


class _Flights(Generic[T]):
    """Concurrent calls for one key run the work once; the others wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[object, Future[T]] = {}

    def run(self, key: object, work: Callable[[], T], remaining: Callable[[], float]) -> tuple[T, bool]:
        """(the result, whether this call did the work)."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            try:
                return flight.result(timeout=max(0.0, remaining())), False
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


class Cache(Generic[K, V]):
    """Values of one kind (``kind`` names them in the shared level and the logs), bounded and expiring."""

    def __init__(
        self,
        kind: str,
        maxsize: int,
        lifetime: Callable[[V], Lifetime],
        *,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedLevel | None = None,
        codec: Codec[V] | None = None,
    ) -> None:
        if shared is not None and codec is None:
            raise ValueError("a shared level needs a codec")
        self.kind = kind
        self._lifetime = lifetime
        self._clock = clock
        self._shared = shared if codec is not None else None
        self._codec = codec
        # cachetools' caches are not thread-safe: the worker runs handlers on a thread pool.
        self._lock = threading.Lock()
        self._entries: LRUCache[K, _Entry[V]] = LRUCache(maxsize)
        self._flights: _Flights[tuple[V, Outcome]] = _Flights()

    def __len__(self) -> int:
        """Entries held in process, expired ones not yet met included."""
        with self._lock:
            return len(self._entries)

    def get_or_load(
        self,
        key: K,
        load: Callable[[], V],
        remaining: Callable[[], float],
        *,
        accept: Callable[[V], bool] | None = None,
    ) -> tuple[V, Outcome]:
        """The fresh value for ``key``, or ``load()``'s, made once for concurrent callers (and, with a shared
        level, once for the fleet), within ``remaining()`` seconds.

        ``accept``: a fresh value it refuses counts as a miss (the catalog's "read after this time").
        """
        fresh = self._fresh(key, accept)
        if fresh is not None:
            return fresh, "hit"
        (value, outcome), leader = self._flights.run(key, lambda: self._load(key, load, remaining, accept), remaining)
        return value, outcome if leader else "shared"

    def kept(self, key: K) -> V | None:
        """The value held in process for ``key`` while its keeping lasts, fresh or not: what a load that
        failed may serve instead (``Lifetime.keep_until``). No load, no shared level."""
        with self._lock:
            entry = self._entries.get(key)
        return entry.value if entry is not None and entry.lifetime.end > self._clock.now() else None

    # -- the one caller in flight ------------------------------------------------------------

    def _load(
        self, key: K, load: Callable[[], V], remaining: Callable[[], float], accept: Callable[[V], bool] | None
    ) -> tuple[V, Outcome]:
        # A flight that ended just before this one started may have filled the cache; the shared level is
        # read here, by the one caller in flight, not by every concurrent miss.
        fresh = self._fresh(key, accept)
        if fresh is not None:
            return fresh, "hit"
        shared = self._read_shared(key, accept)
        if shared is not None:
            return shared, "l2"

        def load_and_keep() -> V:
            value = load()
            self._keep(key, value)
            return value

        if self._shared is None:
            return load_and_keep(), "miss"
        # Other instances missing this key now wait for this one load instead of making their own.
        value, source = self._shared.once(
            self.kind, self._shared_key(key), load_and_keep, lambda: self._read_shared(key, accept), remaining
        )
        return value, "miss" if source == "created" else "l2"

    # -- the process level -------------------------------------------------------------------

    def _fresh(self, key: K, accept: Callable[[V], bool] | None) -> V | None:
        """The value if it is in process, fresh and acceptable (an entry past its keeping is dropped)."""
        now = self._clock.now()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.lifetime.end <= now:
                del self._entries[key]
                return None
        if entry.lifetime.fresh_until <= now or (accept is not None and not accept(entry.value)):
            return None
        return entry.value

    def _keep(self, key: K, value: V) -> None:
        """Keep ``value`` in process (not at all if its keeping is over) and share it."""
        lifetime = self._lifetime(value)
        ttl = lifetime.end - self._clock.now()
        with self._lock:
            if ttl <= 0:
                self._entries.pop(key, None)
                return
            self._entries[key] = _Entry(value, lifetime)
        if self._shared is not None and self._codec is not None:
            data = json.dumps(self._codec.dumps(value), separators=(",", ":")).encode("utf-8")
            self._shared.put(self.kind, self._shared_key(key), data, ttl)

    # -- the shared level --------------------------------------------------------------------

    def _shared_key(self, key: K) -> str:
        # "<kind>:<key text>": the layout of the entries already in Redis (their names hash it).
        return f"{self.kind}:{key.text()}"

    def _read_shared(self, key: K, accept: Callable[[V], bool] | None) -> V | None:
        """A fresh, acceptable value from the shared level, kept in process too; None for anything else."""
        if self._shared is None or self._codec is None:
            return None
        plain = self._shared.get(self.kind, self._shared_key(key))
        if plain is None:
            return None
        try:
            value = self._codec.loads(json.loads(plain))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            logger.warning("cache %s: unreadable shared entry ignored", self.kind)
            return None
        lifetime = self._lifetime(value)
        now = self._clock.now()
        if lifetime.end <= now:
            return None
        with self._lock:
            self._entries[key] = _Entry(value, lifetime)
        if lifetime.fresh_until <= now or (accept is not None and not accept(value)):
            return None
        return value

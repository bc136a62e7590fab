"""The one cache: a value by key, with expiry, made once for concurrent callers.

``Cache`` keeps at most ``maxsize`` entries in process (cachetools' ``LRUCache``: past the bound the
least recently used goes first), each with its own ``Lifetime`` computed from its value:

- handed out until ``fresh_until``;
- from ``refresh_from`` (refresh ahead), still handed out, and the first caller that finds it so
  starts one re-load of that key in the background (one per key per process, and with a shared
  level one for the fleet, under its lock); the new value replaces the old one when it arrives;
- kept until ``keep_until`` past its freshness, and then served only when a load fails with a
  transient fault (the cache's ``transient``), never after another failure, which drops it;
- dropped when met past all that, never served. (cachetools' ``TLRUCache`` would also drop expired
  values unasked, but its expiry heap keeps every evicted key until that key's expiry time comes up:
  under churn, such as a new user per request, that is more memory than the values themselves.)

``get_or_load`` is the whole interface: the fresh value if there is one, else one ``load`` shared by
the concurrent callers of this process, and, with a ``SharedLevel`` (Redis, ``shared.shared_cache``),
one load for the whole fleet under its lock, the value then read from the shared level by the others.
A value travels to the shared level as JSON through the cache's ``Codec``.

A value may itself mean "absent" (a ``V`` such as ``Customer | None``: the cache never takes None for
a miss); a load runs only in the one caller that found no usable entry, so a check made at the start of
``load`` (a budget) runs before any upstream call and never on a hit; keys carry whatever separates
them (a tenant, a profile) in ``text()``.
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

from shared.background import Background
from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.errors import UpstreamTimeout

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

# How a value was found, as the request's log line says it: "hit" (in process), "l2" (from the shared
# level, or another instance's load), "miss" (loaded here), "shared" (another request's load here),
# "stale" (kept past its freshness, served because the load failed with a transient fault).
Outcome = Literal["hit", "l2", "miss", "shared", "stale"]
# The time a background re-load has, as a request has its deadline.
BACKGROUND_SECONDS = 20.0
# After a failed re-load ahead, the key is not re-loaded ahead again for this long.
REFRESH_RETRY_SECONDS = 60.0
# After a transient failure, a kept value is served without asking upstream again for the failure's
# Retry-After (at most the maximum), else for this long.
STALE_RETRY_SECONDS = 30.0
STALE_RETRY_MAX_SECONDS = 120.0
Source = Literal["shared", "created"]  # from the shared level's ``once``: read there, or made here


class CacheKey(Protocol):
    """A cache key: hashable, and with a text that names it in the shared level (all of it: tenant,
    profile, user, whatever separates one value from another)."""

    def text(self) -> str: ...


K = TypeVar("K", bound=CacheKey)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Epoch seconds on the clock's ``now``: handed out until ``fresh_until``, re-loaded in the background
    from ``refresh_from`` (None: never ahead), kept for a failing load until ``keep_until`` (None: not past
    ``fresh_until``)."""

    fresh_until: float
    refresh_from: float | None = None
    keep_until: float | None = None

    @property
    def end(self) -> float:
        return max(self.fresh_until, self.keep_until or 0.0)

    def due(self, now: float) -> bool:
        """Time to re-load it ahead of its expiry."""
        return self.refresh_from is not None and now >= self.refresh_from


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


class _Ahead(Generic[K]):
    """Re-loads ahead in the background: one per key at a time, and none again soon after one failed."""

    def __init__(self, kind: str, background: Background, clock: Clock, maxsize: int) -> None:
        self._kind = kind
        self._background = background
        self._clock = clock
        self._lock = threading.Lock()
        # Keys queued or being re-loaded (None), or whose last re-load failed: not again before then (a
        # monotonic time), so that an outage is not asked once per request.
        self._keys: LRUCache[K, float | None] = LRUCache(maxsize)

    def start(self, key: K, reload: Callable[[], None]) -> None:
        """Queue ``reload`` unless one is queued or running for ``key``, or failed a short while ago."""
        with self._lock:
            if key in self._keys and ((not_before := self._keys[key]) is None or self._clock.monotonic() < not_before):
                return
            self._keys[key] = None

        def job() -> None:
            retry_at = None
            try:
                reload()
            except Exception as exc:  # noqa: BLE001 - the value in hand still serves; a later request tries again
                retry_at = self._clock.monotonic() + REFRESH_RETRY_SECONDS
                logger.warning(
                    "cache %s: refresh ahead failed (%s); trying again after %.0f s",
                    self._kind,
                    getattr(exc, "cause", type(exc).__name__),
                    REFRESH_RETRY_SECONDS,
                )
            finally:
                self._done(key, retry_at)

        if not self._background.submit(job):
            self._done(key, None)

    def _done(self, key: K, retry_at: float | None) -> None:
        with self._lock:
            if retry_at is None:
                self._keys.pop(key, None)
            else:
                self._keys[key] = retry_at


class Cache(Generic[K, V]):
    """Values of one kind (``kind`` names them in the shared level and the logs), bounded and expiring.

    ``background`` runs the refreshes ahead (none without it); ``transient`` says which load failures a
    kept entry may stand in for (none without it).
    """

    def __init__(
        self,
        kind: str,
        maxsize: int,
        lifetime: Callable[[V], Lifetime],
        *,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedLevel | None = None,
        codec: Codec[V] | None = None,
        background: Background | None = None,
        transient: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if shared is not None and codec is None:
            raise ValueError("a shared level needs a codec")
        self.kind = kind
        self._lifetime = lifetime
        self._clock = clock
        self._shared = shared if codec is not None else None
        self._codec = codec
        self._ahead: _Ahead[K] | None = _Ahead(kind, background, clock, maxsize) if background is not None else None
        self._transient = transient
        # cachetools' caches are not thread-safe: the worker runs handlers on a thread pool.
        self._lock = threading.Lock()
        self._entries: LRUCache[K, _Entry[V]] = LRUCache(maxsize)
        self._flights: _Flights[tuple[V, Outcome]] = _Flights()
        self._failing: LRUCache[K, float] = LRUCache(maxsize)  # key -> monotonic time to ask upstream again

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
        refresh: Callable[[], V] | None = None,
    ) -> tuple[V, Outcome]:
        """The fresh value for ``key``, or ``load()``'s, made once for concurrent callers (and, with a shared
        level, once for the fleet), within ``remaining()`` seconds.

        ``accept``: a value it refuses counts as a miss (the catalog's "read after this time").
        ``refresh``: how to re-load the key off the request path when its value is due (refresh ahead).
        """
        entry = self._entry(key)
        now = self._clock.now()
        if entry is not None and entry.lifetime.fresh_until > now and (accept is None or accept(entry.value)):
            if refresh is not None and entry.lifetime.due(now):
                self._refresh_ahead(key, refresh)
            return entry.value, "hit"
        (value, outcome), leader = self._flights.run(key, lambda: self._load(key, load, remaining, accept), remaining)
        return value, outcome if leader else "shared"

    # -- the one caller in flight ------------------------------------------------------------

    def _load(
        self, key: K, load: Callable[[], V], remaining: Callable[[], float], accept: Callable[[V], bool] | None
    ) -> tuple[V, Outcome]:
        # A flight that ended just before this one started may have filled the cache; the shared level is
        # read here, by the one caller in flight, not by every concurrent miss.
        fresh = self._fresh(key, accept)
        if fresh is not None:
            return fresh, "hit"
        resting = self._resting(key, accept)
        if resting is not None:
            return resting, "stale"
        try:
            loaded = self._load_shared(key, load, remaining, accept)
        except Exception as exc:
            kept = self._kept(key, exc, accept)
            if kept is None:
                raise
            return kept, "stale"
        with self._lock:
            self._failing.pop(key, None)
        return loaded

    def _load_shared(
        self, key: K, load: Callable[[], V], remaining: Callable[[], float], accept: Callable[[V], bool] | None
    ) -> tuple[V, Outcome]:
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

    def _resting(self, key: K, accept: Callable[[V], bool] | None) -> V | None:
        """The kept value while the last load's transient failure is recent: not asked again before then,
        so an outage is not asked once per request."""
        with self._lock:
            until = self._failing.get(key)
        if until is None or self._clock.monotonic() >= until:
            return None
        entry = self._entry(key)
        if entry is None or (accept is not None and not accept(entry.value)):
            return None
        return entry.value

    def _kept(self, key: K, exc: Exception, accept: Callable[[V], bool] | None) -> V | None:
        """A kept value to serve instead of a transient failure; after any other failure the kept value is
        dropped (access removed, item deleted: it must not come back at the next outage)."""
        entry = self._entry(key)
        if entry is None or (accept is not None and not accept(entry.value)):
            return None
        if self._transient is None or not self._transient(exc):
            with self._lock:
                if self._entries.get(key) is entry and entry.lifetime.fresh_until <= self._clock.now():
                    del self._entries[key]
            return None
        told = str(getattr(exc, "headers", {}).get("Retry-After", ""))
        rest = min(float(told), STALE_RETRY_MAX_SECONDS) if told.isdigit() else STALE_RETRY_SECONDS
        with self._lock:
            self._failing[key] = self._clock.monotonic() + max(1.0, rest)
        logger.warning(
            "cache %s: serving a stale value, kept %.0f s more, after a transient failure (%s); asking again "
            "after %.0f s",
            self.kind,
            entry.lifetime.end - self._clock.now(),
            getattr(exc, "cause", type(exc).__name__),
            max(1.0, rest),
        )
        return entry.value

    # -- refresh ahead -----------------------------------------------------------------------

    def _refresh_ahead(self, key: K, refresh: Callable[[], V]) -> None:
        def reload() -> None:
            remaining = Deadline.after(self._clock, BACKGROUND_SECONDS).remaining
            self._flights.run(key, lambda: self._reload(key, refresh, remaining), remaining)

        if self._ahead is not None:
            self._ahead.start(key, reload)

    def _reload(self, key: K, refresh: Callable[[], V], remaining: Callable[[], float]) -> tuple[V, Outcome]:
        """The re-load: another instance's, when it already made one (not yet due), else ``refresh()``'s."""
        not_due = lambda value: not self._lifetime(value).due(self._clock.now())  # noqa: E731
        return self._load_shared(key, refresh, remaining, not_due)

    # -- the process level -------------------------------------------------------------------

    def _entry(self, key: K) -> _Entry[V] | None:
        """The entry if it is in process and still kept (one past its keeping is dropped)."""
        now = self._clock.now()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.lifetime.end <= now:
                del self._entries[key]
                return None
            return entry

    def _fresh(self, key: K, accept: Callable[[V], bool] | None) -> V | None:
        entry = self._entry(key)
        if entry is None or entry.lifetime.fresh_until <= self._clock.now():
            return None
        return entry.value if accept is None or accept(entry.value) else None

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
            held = self._entries.get(key)
            if held is None or held.lifetime.fresh_until < lifetime.fresh_until:  # never replace a newer one
                self._entries[key] = _Entry(value, lifetime)
        if lifetime.fresh_until <= now or (accept is not None and not accept(value)):
            return None
        return value

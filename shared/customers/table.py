"""The ``table`` directory: customers read lazily from an Azure Storage table, one point read at a time.

Each customer is read with one point read (PartitionKey ``customer``, RowKey its id) when first asked
for and again once its entry is POWERBI_CUSTOMERS_TTL_SECONDS old; an absent customer is remembered as
absent for as long. Concurrent reads of one customer share one call. At most ``max_customers`` entries
are kept (least recently used dropped first), so principals naming random customers cannot fill memory.

A table that cannot be read (unreachable, refused, missing) is ``503 unavailable`` with Retry-After,
never a 500; an entry read before keeps serving meanwhile, and for ``RETRY_AFTER_SECONDS`` after a
failure the table is left alone (customers it has no entry for are answered 503 at once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import LRUCache

from shared.cache import SingleFlight
from shared.clock import SYSTEM_CLOCK, Clock
from shared.customers.directory import PARTITION_KEY, Customer
from shared.errors import ConfigurationError, DirectoryUnavailable

logger = logging.getLogger(__name__)

MAX_CUSTOMERS = 10_000
RETRY_AFTER_SECONDS = 10
# How long a request waits for another request's read of the same customer (the table's own timeouts,
# shared.customers.directory, bound the read itself).
WAIT_SECONDS = 15.0
_UNAVAILABLE = "The customer directory cannot be read right now; try again after the time in Retry-After."


class EntityReader(Protocol):
    """What the directory needs of ``azure.data.tables.TableClient``: one point read."""

    def get_entity(self, partition_key: str, row_key: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """A customer as last read (None: absent), or what was wrong with its entity, and when it was read."""

    read_at: float
    customer: Customer | None
    problem: str | None = None


class TableDirectory:
    def __init__(
        self,
        table: EntityReader,
        ttl_seconds: float,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_customers: int = MAX_CUSTOMERS,
    ) -> None:
        self._table = table
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe
        self._entries: LRUCache[str, _Entry] = LRUCache(max_customers)
        self._flights: SingleFlight[str, _Entry] = SingleFlight()
        self._down_until = 0.0  # monotonic time before which the table is not asked again after a failure

    def find(self, customer_id: str) -> Customer | None:
        """The customer with this (canonical) id, or None when the table has none."""
        entry = self._fresh(customer_id)
        if entry is None:
            entry = self._flights.run(customer_id, lambda: self._read(customer_id), lambda: WAIT_SECONDS)[0]
        if entry.problem is not None:
            raise ConfigurationError(
                "The customer's entry in the directory is not valid.",
                cause=f"customer {customer_id}: its table entity is not valid: {entry.problem}",
            )
        return entry.customer

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _fresh(self, customer_id: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(customer_id)
        if entry is not None and self._clock.now() - entry.read_at < self._ttl:
            return entry
        return None

    def _read(self, customer_id: str) -> _Entry:
        from azure.core.exceptions import AzureError, ResourceNotFoundError  # only with the table source

        fresh = self._fresh(customer_id)  # a read that finished just before this one started will do
        if fresh is not None:
            return fresh
        if self._clock.monotonic() < self._down_until:
            return self._stale(customer_id, "the table failed moments ago")
        try:
            entity = self._table.get_entity(PARTITION_KEY, customer_id)
        except ResourceNotFoundError as error:
            code = getattr(error, "error_code", None)
            if str(getattr(code, "value", code)) != "TableNotFound":  # an enum member, or a string
                return self._keep(customer_id, _Entry(self._clock.now(), None))
            return self._failed(customer_id, "the table does not exist")
        except AzureError as error:
            return self._failed(customer_id, f"{type(error).__name__}")
        logger.debug("customer directory: read customer %s", customer_id)
        try:
            entry = _Entry(self._clock.now(), Customer.from_entity(entity))
        except ValueError as error:
            entry = _Entry(self._clock.now(), None, str(error))
        return self._keep(customer_id, entry)

    def _keep(self, customer_id: str, entry: _Entry) -> _Entry:
        with self._lock:
            self._entries[customer_id] = entry
        return entry

    def _failed(self, customer_id: str, what: str) -> _Entry:
        self._down_until = self._clock.monotonic() + RETRY_AFTER_SECONDS
        logger.warning(
            "customer directory: the table cannot be read (%s); asking it again in %d s",
            what,
            RETRY_AFTER_SECONDS,
        )
        return self._stale(customer_id, what)

    def _stale(self, customer_id: str, what: str) -> _Entry:
        """The entry read before, if any, else 503."""
        with self._lock:
            entry = self._entries.get(customer_id)
        if entry is not None:
            return entry
        raise DirectoryUnavailable(
            _UNAVAILABLE,
            retry_after=RETRY_AFTER_SECONDS,
            cause=f"customer directory table cannot be read ({what}) and holds no entry for customer {customer_id}",
        )

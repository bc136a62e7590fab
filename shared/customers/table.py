"""The ``table`` directory: customers read lazily from an Azure Storage table, one point read at a time.

Each customer is read with one point read (PartitionKey ``customer``, RowKey its id) when first asked
for and again once its entry is POWERBI_CUSTOMERS_TTL_SECONDS old; an absent customer is remembered as
absent for as long. The entries live in the project's one cache (``shared.cache.Cache``): concurrent
reads of one customer share one call, and at most ``max_customers`` entries are kept (least recently
used dropped first), so principals naming random customers cannot fill memory.

A table that cannot be read (unreachable, refused, missing) is ``503 unavailable`` with Retry-After,
never a 500; an entry read before keeps serving meanwhile (the cache keeps it ``KEEP_SECONDS`` past its
freshness and serves it for this transient failure), and for ``RETRY_AFTER_SECONDS`` after a failure
the table is left alone (customers it holds no entry for are answered 503 at once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared import telemetry
from shared.cache import Cache, Lifetime
from shared.clock import SYSTEM_CLOCK, Clock
from shared.customers.directory import PARTITION_KEY, Customer
from shared.errors import ConfigurationError, DirectoryUnavailable

logger = logging.getLogger(__name__)

MAX_CUSTOMERS = 10_000
RETRY_AFTER_SECONDS = 10
# How long past its freshness an entry may still serve while the table cannot be read.
KEEP_SECONDS = 24 * 3600.0
# How long a request waits for another request's read of the same customer (the table's own timeouts,
# shared.customers.directory, bound the read itself).
WAIT_SECONDS = 15.0
_UNAVAILABLE = "The customer directory cannot be read right now; try again after the time in Retry-After."


class EntityReader(Protocol):
    """What the directory needs of ``azure.data.tables.TableClient``: one point read."""

    def get_entity(self, partition_key: str, row_key: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class CustomerKey:
    id: str  # canonical (lower-case)

    def text(self) -> str:
        return self.id


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
        self._clock = clock
        self._entries: Cache[CustomerKey, _Entry] = Cache(
            "customer",
            max_customers,
            lambda entry: Lifetime(entry.read_at + ttl_seconds, None, entry.read_at + ttl_seconds + KEEP_SECONDS),
            clock=clock,
            transient=lambda error: isinstance(error, DirectoryUnavailable),  # an entry read before serves on
        )
        self._down_until = 0.0  # monotonic time before which the table is not asked again after a failure

    def find(self, customer_id: str) -> Customer | None:
        """The customer with this (canonical) id, or None when the table has none."""
        key = CustomerKey(customer_id)
        entry = self._entries.get_or_load(key, lambda: self._read(key), lambda: WAIT_SECONDS)[0]
        if entry.problem is not None:
            raise ConfigurationError(
                "The customer's entry in the directory is not valid.",
                cause=f"customer {customer_id}: its table entity is not valid: {entry.problem}",
            )
        return entry.customer

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self, key: CustomerKey) -> _Entry:
        from azure.core.exceptions import AzureError, ResourceNotFoundError  # only with the table source

        if self._clock.monotonic() < self._down_until:
            raise self._unavailable(key, "the table failed moments ago")
        try:
            with telemetry.upstream("directory", "read", "directory read") as call:
                try:
                    entity = self._table.get_entity(PARTITION_KEY, key.id)
                except ResourceNotFoundError:
                    call.status("not_found")  # an absent customer is an answer, not a failure
                    raise
                call.status("ok")
        except ResourceNotFoundError as error:
            code = getattr(error, "error_code", None)
            if str(getattr(code, "value", code)) != "TableNotFound":  # an enum member, or a string
                return _Entry(self._clock.now(), None)
            raise self._failed(key, "the table does not exist") from None
        except AzureError as error:
            raise self._failed(key, type(error).__name__) from None
        logger.debug("customer directory: read customer %s", key.id)
        try:
            return _Entry(self._clock.now(), Customer.from_entity(entity))
        except ValueError as error:
            return _Entry(self._clock.now(), None, str(error))

    def _failed(self, key: CustomerKey, what: str) -> DirectoryUnavailable:
        self._down_until = self._clock.monotonic() + RETRY_AFTER_SECONDS
        logger.warning(
            "customer directory: the table cannot be read (%s); asking it again in %d s", what, RETRY_AFTER_SECONDS
        )
        return self._unavailable(key, what)

    def _unavailable(self, key: CustomerKey, what: str) -> DirectoryUnavailable:
        """503, unless the cache holds an entry read before for this customer: it serves that instead."""
        return DirectoryUnavailable(
            _UNAVAILABLE,
            retry_after=RETRY_AFTER_SECONDS,
            cause=f"customer directory table cannot be read ({what}) for customer {key.id}",
        )

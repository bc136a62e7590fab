"""The customer directory as the onboarding command edits it: the Azure Storage table, or POWERBI_CUSTOMERS.

The table is written directly (its own ``upsert_entity``, ``delete_entity``, ``query_entities``). The
``setting`` directory is an app setting the command cannot change: it prints the JSON object to add or the
id to remove, for the person to paste. A failure of the table raises
``UpstreamUnreachable`` whose message names the table and the kind of failure, never the connection string or a
key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared.customers.directory import PARTITION_KEY, Customer, canonical_id
from shared.errors import UpstreamUnreachable

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.customers.config import CustomersSettings


@dataclass(frozen=True)
class Invalid:
    """A directory entry that is not a valid customer, and why."""

    id: str
    problem: str


class Store(Protocol):
    description: str
    writes: bool  # False: edits are printed for a person to make

    def get(self, customer_id: str) -> Customer | None: ...

    def entries(self) -> Iterator[Customer | Invalid]: ...

    def put(self, customer: Customer, existing: Customer | None) -> str: ...

    def delete(self, customer: Customer) -> str: ...


def same_entry(a: Customer | None, b: Customer) -> bool:
    """Equal as the directory stores them, display name included."""
    return a is not None and a.to_json() == b.to_json()


class SettingStore:
    """POWERBI_CUSTOMERS (validated with the other settings); edits are printed for a person to make."""

    def __init__(self, customers: tuple[Customer, ...], enabled: bool = True) -> None:
        self.customers = {c.id: c for c in customers}
        self.enabled = enabled
        self.writes = False
        self.description = "POWERBI_CUSTOMERS" if enabled else "POWERBI_CUSTOMERS (POWERBI_CUSTOMERS_SOURCE is none)"

    def get(self, customer_id: str) -> Customer | None:
        return self.customers.get(canonical_id(customer_id))

    def entries(self) -> Iterator[Customer | Invalid]:
        yield from self.customers.values()

    def put(self, customer: Customer, existing: Customer | None) -> str:
        verb = "replace the object with this id by" if existing else "add this object to the array of"
        text = f"To finish, {verb} POWERBI_CUSTOMERS (an app setting):\n{json.dumps(customer.to_json())}"
        if not self.enabled:
            text += "\nand set POWERBI_CUSTOMERS_SOURCE=setting and POWERBI_CUSTOMER_FROM"
        return text

    def delete(self, customer: Customer) -> str:
        return f"To finish, remove the object with id {customer.id!r} from POWERBI_CUSTOMERS (an app setting)."


class TableStore:
    """The Azure Storage table of POWERBI_CUSTOMERS_TABLE, one entity per customer."""

    def __init__(self, client: TableClient, table: str) -> None:
        self.client = client
        self.description = f"table {table}"
        self.writes = True

    def _failed(self, doing: str, error: Exception) -> UpstreamUnreachable:
        status = getattr(error, "status_code", None)
        code = getattr(error, "error_code", None)
        detail = " ".join(str(p) for p in (type(error).__name__, status, code) if p)
        return UpstreamUnreachable(
            f"The customers {self.description} could not be {doing} ({detail}): check POWERBI_CUSTOMERS_CONNECTION "
            "and that you may read and write the table (Storage Table Data Contributor).",
            cause=f"{self.description} {doing}: {detail}",
        )

    def get(self, customer_id: str) -> Customer | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = self.client.get_entity(PARTITION_KEY, canonical_id(customer_id))
        except ResourceNotFoundError:
            return None  # no such entity, or no table yet
        except AzureError as error:
            raise self._failed("read", error) from error
        return Customer.from_entity(entity)

    def entries(self) -> Iterator[Customer | Invalid]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            for entity in self.client.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION_KEY}):
                yield _parsed(entity)
        except ResourceNotFoundError:
            return  # no table yet: no customers
        except AzureError as error:
            raise self._failed("read", error) from error

    def put(self, customer: Customer, existing: Customer | None) -> str:
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            try:
                self.client.upsert_entity(customer.to_entity(), mode=UpdateMode.REPLACE)
            except ResourceNotFoundError:  # the table does not exist yet (deploy.sh --customers creates it)
                self.client.create_table()
                self.client.upsert_entity(customer.to_entity(), mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise self._failed("written", error) from error
        return f"{'updated' if existing else 'added'} customer {customer.id} in the {self.description}"

    def delete(self, customer: Customer) -> str:
        from azure.core.exceptions import AzureError

        try:
            self.client.delete_entity(PARTITION_KEY, customer.id)
        except AzureError as error:
            raise self._failed("written", error) from error
        return f"removed customer {customer.id} from the {self.description}"


def _parsed(entity: Any) -> Customer | Invalid:
    try:
        return Customer.from_entity(entity)
    except ValueError as error:
        return Invalid(str(entity.get("RowKey", "?")), str(error))


def operator_table(customers: CustomersSettings) -> TableClient:
    """The table as a person (or pipeline) reaches it: a connection string as the function does; a table
    endpoint with their own Azure sign-in (``az login``, environment credentials) or a managed identity, since
    the command runs outside the function app."""
    from shared.customers.directory import table_client

    connection = customers.connection
    if connection is None or connection.connection_string is not None:
        return table_client(customers)
    from azure.data.tables import TableClient
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(
        managed_identity_client_id=connection.client_id, exclude_interactive_browser_credential=True
    )
    return TableClient(str(connection.service_uri), customers.table, credential=credential)

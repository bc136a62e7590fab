"""A customer, in its two forms (a JSON object of POWERBI_CUSTOMERS, an Azure Tables entity), and the table.

A customer is its id (the key the signed-in user's principal yields, compared case-insensitively: kept
lower-cased), the workspaces it may embed from (the first is the default), the service principal profile
that owns them (absent: the app itself), optional report and dashboard allow-lists and a display name.

As a table entity: PartitionKey ``customer``, RowKey the id, Azure Tables' PascalCase property names, and
lists as comma-separated strings. ``table_client`` opens the table the way Azure Functions reads a
connection; ``azure-data-tables`` (and ``azure-identity`` for a managed identity) are imported there only,
so nothing is imported unless the table source is configured.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.redact import register_secret
from shared.settings import Settings, parse_guid

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.customers.config import CustomersSettings

PARTITION_KEY = "customer"
MAX_ID_LENGTH = 256
# Azure Tables refuses these in a RowKey; a principal's value holding one cannot be a customer.
_FORBIDDEN_IN_ID = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# Bounds on the table's HTTP calls: an unreadable table must answer 503 quickly, not after minutes.
TABLE_RETRIES = 1
TABLE_CONNECT_TIMEOUT_SECONDS = 3
TABLE_READ_TIMEOUT_SECONDS = 5


def canonical_id(value: str) -> str:
    """The form a customer id is kept and looked up in: ids are compared case-insensitively."""
    return value.strip().lower()


def _guids(name: str, values: Iterable[Any]) -> tuple[str, ...]:
    parsed: list[str] = []
    for value in values:
        guid = parse_guid(value) if isinstance(value, str) else None
        if guid is None:
            raise ValueError(f"{name} must hold GUIDs only")
        if guid not in parsed:
            parsed.append(guid)
    return tuple(parsed)


@dataclass(frozen=True, slots=True)
class Customer:
    """One customer; constructing it validates it (ValueError says what is wrong) and canonicalises it."""

    id: str
    workspaces: tuple[str, ...]
    profile_id: str | None = None
    reports: frozenset[str] | None = None
    dashboards: frozenset[str] | None = None
    display_name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not canonical_id(self.id):
            raise ValueError("a customer's id must be a non-empty string")
        if len(self.id) > MAX_ID_LENGTH or _FORBIDDEN_IN_ID.search(self.id):
            raise ValueError(
                f"customer id {self.id[:40]!r} must be at most {MAX_ID_LENGTH} characters without / \\ # ? "
                "or control characters"
            )
        cid = canonical_id(self.id)
        object.__setattr__(self, "id", cid)
        if isinstance(self.workspaces, str):
            raise ValueError(f"customer {cid}: workspaces must be a list")
        workspaces = _guids(f"customer {cid}: workspaces", self.workspaces)
        if not workspaces:
            raise ValueError(f"customer {cid}: workspaces must list at least one workspace id")
        object.__setattr__(self, "workspaces", workspaces)
        if self.profile_id is not None:
            profile = parse_guid(self.profile_id) if isinstance(self.profile_id, str) else None
            if profile is None:
                raise ValueError(f"customer {cid}: profileId must be a GUID")
            object.__setattr__(self, "profile_id", profile)
        for name in ("reports", "dashboards"):
            listed = getattr(self, name)
            if listed is None:
                continue
            if isinstance(listed, str):
                raise ValueError(f"customer {cid}: {name} must be a list")
            ids = _guids(f"customer {cid}: {name}", listed)
            if not ids:
                raise ValueError(f"customer {cid}: {name}, when present, must list at least one id")
            object.__setattr__(self, name, frozenset(ids))
        if self.display_name is not None and not isinstance(self.display_name, str):
            raise ValueError(f"customer {cid}: displayName must be a string")

    @property
    def default_workspace(self) -> str:
        return self.workspaces[0]

    # -- the JSON object of POWERBI_CUSTOMERS ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The POWERBI_CUSTOMERS object form; absent fields are omitted."""
        data: dict[str, Any] = {"id": self.id}
        if self.profile_id:
            data["profileId"] = self.profile_id
        data["workspaces"] = list(self.workspaces)
        if self.reports is not None:
            data["reports"] = sorted(self.reports)
        if self.dashboards is not None:
            data["dashboards"] = sorted(self.dashboards)
        if self.display_name:
            data["displayName"] = self.display_name
        return data

    @classmethod
    def from_json(cls, data: Any) -> Customer:
        if not isinstance(data, Mapping):
            raise ValueError("a customer must be a JSON object")
        unknown = set(data) - {"id", "profileId", "workspaces", "reports", "dashboards", "displayName"}
        if unknown:
            raise ValueError(f"customer {data.get('id')!s:.40}: unknown field(s) {', '.join(sorted(unknown))}")
        if "workspaces" not in data:
            raise ValueError(f"customer {data.get('id')!s:.40}: workspaces is required")
        return cls(
            data.get("id"),  # type: ignore[arg-type]  # validated by the constructor
            data["workspaces"],
            data.get("profileId"),
            data.get("reports"),
            data.get("dashboards"),
            data.get("displayName"),
        )

    # -- the Azure Tables entity ----------------------------------------------------------------------------

    def to_entity(self) -> dict[str, str]:
        entity = {"PartitionKey": PARTITION_KEY, "RowKey": self.id, "Workspaces": ",".join(self.workspaces)}
        if self.profile_id:
            entity["ProfileId"] = self.profile_id
        if self.reports is not None:
            entity["Reports"] = ",".join(sorted(self.reports))
        if self.dashboards is not None:
            entity["Dashboards"] = ",".join(sorted(self.dashboards))
        if self.display_name:
            entity["DisplayName"] = self.display_name
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Customer:
        if entity.get("PartitionKey") != PARTITION_KEY:
            raise ValueError(f"a customer entity's PartitionKey must be {PARTITION_KEY!r}")

        def listed(name: str) -> frozenset[str] | None:
            value = entity.get(name)
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f"customer {entity.get('RowKey')!s:.40}: {name} must be a comma-separated string")
            return frozenset(part.strip() for part in value.split(",") if part.strip())

        return cls(
            entity.get("RowKey"),  # type: ignore[arg-type]  # validated by the constructor
            tuple(value.strip() for value in str(entity.get("Workspaces") or "").split(",") if value.strip()),
            entity.get("ProfileId") or None,
            listed("Reports"),
            listed("Dashboards"),
            entity.get("DisplayName") or None,
        )


@dataclass(frozen=True)
class TableConnection:
    """A connection as Azure Functions reads one: a connection string, or a table endpoint reached with the
    app's managed identity (a user-assigned one when ``client_id`` is set)."""

    name: str  # the connection's name (POWERBI_CUSTOMERS_CONNECTION), for messages
    connection_string: str | None = field(default=None, repr=False)  # holds the account key
    service_uri: str | None = None
    client_id: str | None = None


def table_client(settings: Settings | CustomersSettings) -> TableClient:
    """The customers table of the settings (the whole settings, or their customers concern) with the table
    source; a ValueError without it."""
    concern = settings.customers if isinstance(settings, Settings) else settings
    if concern is None or concern.source != "table" or concern.connection is None:
        raise ValueError("the customers table needs POWERBI_CUSTOMERS_SOURCE=table and its connection")
    connection = concern.connection
    from azure.data.tables import TableClient  # only when the table source is configured

    # The SDK logs every request and answer, headers and all, at INFO: the directory logs its own line.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

    options: dict[str, Any] = {
        "retry_total": TABLE_RETRIES,
        "connection_timeout": TABLE_CONNECT_TIMEOUT_SECONDS,
        "read_timeout": TABLE_READ_TIMEOUT_SECONDS,
    }
    if connection.connection_string is not None:
        # The account key (or SAS) could sign any request to the account: never in a log line.
        register_secret(connection.connection_string, lasting=True)
        for part in connection.connection_string.split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
                register_secret(value.strip(), lasting=True)
        return TableClient.from_connection_string(connection.connection_string, table_name=concern.table, **options)
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(client_id=connection.client_id)
    return TableClient(str(connection.service_uri), concern.table, credential=credential, **options)

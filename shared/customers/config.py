"""The customers concern of the settings: POWERBI_CUSTOMERS_SOURCE and the five settings it brings.

Read once with the other settings (``shared.settings``), every problem named by its setting, never its
value. With a source, the function's global workspace, item allow-lists and profile must be unset:
each customer brings its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from shared.customers.directory import Customer, TableConnection
from shared.settings import Reader, parse_guid

CustomersSource = Literal["none", "setting", "table"]
SOURCES: tuple[CustomersSource, ...] = ("none", "setting", "table")
DEFAULT_TABLE = "customers"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
DEFAULT_TTL_SECONDS = 300.0
# Settings that say which workspaces, items and profile the whole function uses: a customer says it instead.
GLOBAL_SCOPE_SETTINGS = (
    "POWERBI_WORKSPACE_ID",
    "POWERBI_ALLOWED_WORKSPACES",
    "POWERBI_ALLOWED_REPORTS",
    "POWERBI_ALLOWED_DASHBOARDS",
    "POWERBI_PROFILE_ID",
)
# Azure Tables' rule for a table name.
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_CONNECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class CustomerFrom:
    """How a signed-in user's customer is found: a claim's value, or the one role with a prefix."""

    kind: Literal["claim", "role"]
    value: str  # the claim type, or the role prefix


@dataclass(frozen=True)
class CustomersSettings:
    """POWERBI_CUSTOMERS_*: where the directory is, and how a user's customer is found."""

    source: Literal["setting", "table"]
    customer_from: CustomerFrom
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    customers: tuple[Customer, ...] = ()  # the `setting` directory, validated
    table: str = DEFAULT_TABLE
    connection: TableConnection | None = field(default=None)


def read_customers(reader: Reader) -> CustomersSettings | None:
    """The customers concern, or None for POWERBI_CUSTOMERS_SOURCE=none (today's single-scope behaviour)."""
    source = reader.choice("POWERBI_CUSTOMERS_SOURCE", "none", SOURCES, fold_case=True)
    if source == "none":
        return None
    for name in GLOBAL_SCOPE_SETTINGS:
        if reader.is_set(name):
            reader.problem(f"{name} must be unset with POWERBI_CUSTOMERS_SOURCE={source}: each customer brings its own")
    if (reader.text("WEBSITE_AUTH_ENABLED") or "").lower() != "true":
        # A customer is read from the principal headers, believed only when App Service Authentication sets
        # them (it drops any a caller sends); without it, anyone could claim any customer.
        reader.problem(
            f"POWERBI_CUSTOMERS_SOURCE={source} needs App Service Authentication: turn it on for the function "
            "app, or link it to a Static Web App (either sets WEBSITE_AUTH_ENABLED=True)"
        )
    customer_from = _customer_from(reader)
    ttl = reader.number("POWERBI_CUSTOMERS_TTL_SECONDS", DEFAULT_TTL_SECONDS, 1, 24 * 3600)
    ttl_seconds = float(DEFAULT_TTL_SECONDS if ttl is None else ttl)
    if source == "setting":
        customers = _setting_directory(reader)
        return CustomersSettings("setting", customer_from, ttl_seconds, customers=customers)
    table = reader.text("POWERBI_CUSTOMERS_TABLE", DEFAULT_TABLE) or DEFAULT_TABLE
    if not _TABLE_NAME.match(table):
        reader.problem("POWERBI_CUSTOMERS_TABLE must be a table name: a letter, then 2 to 62 letters or digits")
    return CustomersSettings("table", customer_from, ttl_seconds, table=table, connection=_connection(reader))


def _customer_from(reader: Reader) -> CustomerFrom:
    value = reader.text("POWERBI_CUSTOMER_FROM", required=True) or ""
    kind, _, rest = value.partition(":")
    if value and (kind not in ("claim", "role") or not rest.strip()):
        reader.problem("POWERBI_CUSTOMER_FROM must be claim:<claim type> or role:<prefix>")
    return CustomerFrom("role" if kind == "role" else "claim", rest.strip())


def _setting_directory(reader: Reader) -> tuple[Customer, ...]:
    """POWERBI_CUSTOMERS: a JSON array of customers, each valid, ids unique, no workspace shared."""
    name = "POWERBI_CUSTOMERS"
    raw = reader.text(name, required=True)
    if raw is None:
        return ()
    try:
        data = json.loads(raw)
    except ValueError:
        reader.problem(f"{name} must be a JSON array of customers (it is not valid JSON)")
        return ()
    if not isinstance(data, list) or not data:
        reader.problem(f"{name} must be a JSON array of at least one customer")
        return ()
    customers: list[Customer] = []
    owners: dict[str, str] = {}  # workspace -> the customer listing it
    for position, entry in enumerate(data):
        try:
            customer = Customer.from_json(entry)
        except ValueError as error:
            reader.problem(f"{name}[{position}]: {error}")
            continue
        if any(c.id == customer.id for c in customers):
            reader.problem(f"{name}: customer id {customer.id} is listed twice (ids ignore case)")
            continue
        for workspace in customer.workspaces:
            if workspace in owners:
                reader.problem(
                    f"{name}: workspace {workspace} is listed by customers {owners[workspace]} and {customer.id}"
                )
            owners.setdefault(workspace, customer.id)
        customers.append(customer)
    return tuple(customers)


def _connection(reader: Reader) -> TableConnection | None:
    """POWERBI_CUSTOMERS_CONNECTION, resolved as Azure Functions resolves a connection name."""
    name = reader.text("POWERBI_CUSTOMERS_CONNECTION", DEFAULT_CONNECTION) or DEFAULT_CONNECTION
    if not _CONNECTION_NAME.match(name):
        reader.problem("POWERBI_CUSTOMERS_CONNECTION must be the name of a connection setting")
        return None
    connection_string = reader.text(name)
    if connection_string is not None:
        return TableConnection(name, connection_string=connection_string)
    uri = reader.text(f"{name}__tableServiceUri")
    if uri is None:
        reader.problem(
            f"POWERBI_CUSTOMERS_CONNECTION names the connection {name}: set {name} (a connection string) or "
            f"{name}__tableServiceUri (the table endpoint, reached with the app's managed identity)"
        )
        return None
    if not re.match(r"^https://[^/\s]+/?$", uri):
        reader.problem(f"{name}__tableServiceUri must be an https URL with a host and no path")
    client_id = reader.text(f"{name}__clientId")
    if client_id is not None and parse_guid(client_id) is None:
        reader.problem(f"{name}__clientId must be a GUID")
    return TableConnection(name, service_uri=uri.rstrip("/"), client_id=parse_guid(client_id or "") or None)

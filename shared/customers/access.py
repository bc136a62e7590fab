"""Which customer a request is for: the signed-in user's, from the principal the platform vouches for.

The principal is read under the same trust rules as row-level security (``shared.identity``: App
Service Authentication or a linked Static Web App, the pinned identity provider, the allowed
tenants). POWERBI_CUSTOMER_FROM says where its customer id is: a claim's value, or the user's one role
that starts with a prefix. Nothing the caller controls (query, body, other headers) is read.

No principal: 401. A principal without a customer id, with several, or whose customer the directory
does not hold: 403. Neither reaches Power BI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from shared.clock import SYSTEM_CLOCK, Clock
from shared.customers.config import CustomersSettings
from shared.customers.directory import MAX_ID_LENGTH, Customer, canonical_id, table_client
from shared.errors import ConfigurationError, NotAllowed
from shared.identity import TENANT_CLAIMS, Principal, trusted_principal
from shared.settings import Settings

logger = logging.getLogger(__name__)

_NO_CUSTOMER = "The signed-in user does not belong to a customer this function serves."


class Directory(Protocol):
    """Customers by (canonical) id."""

    def find(self, customer_id: str) -> Customer | None: ...


class SettingDirectory:
    """The ``setting`` directory: POWERBI_CUSTOMERS, parsed and validated once with the settings."""

    def __init__(self, customers: Iterable[Customer]) -> None:
        self._by_id = {customer.id: customer for customer in customers}

    def find(self, customer_id: str) -> Customer | None:
        return self._by_id.get(customer_id)


def directory_for(concern: CustomersSettings, clock: Clock = SYSTEM_CLOCK) -> Directory:
    """The configured directory (the table client is built here; nothing is read until a request)."""
    if concern.source == "setting":
        return SettingDirectory(concern.customers)
    from shared.customers.table import TableDirectory

    return TableDirectory(table_client(concern), concern.ttl_seconds, clock=clock)


class CustomerAccess:
    """Finds each request's customer: one, or a refusal before any Power BI call."""

    def __init__(self, settings: Settings, concern: CustomersSettings, directory: Directory) -> None:
        self.settings = settings
        self.concern = concern
        self.directory = directory

    @classmethod
    def create(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> CustomerAccess | None:
        """None with POWERBI_CUSTOMERS_SOURCE=none."""
        if settings.customers is None:
            return None
        return cls(settings, settings.customers, directory_for(settings.customers, clock))

    def customer_for(self, headers: Mapping[str, str]) -> Customer:
        principal = trusted_principal(headers, self.settings)
        customer_id = self._customer_id(principal)
        customer = self.directory.find(customer_id)
        if customer is None:
            raise NotAllowed(_NO_CUSTOMER, hint=f"(Customer {customer_id} is not in the directory.)")
        if customer.profile_id and self.settings.sign_in.mode == "MasterUser":
            # Profiles belong to service principals: Power BI refuses a profile header from a user.
            raise ConfigurationError(
                "The customer has a service principal profile, which a master user cannot use: set "
                "POWERBI_AUTH_MODE to ServicePrincipal or ManagedIdentity.",
                cause=f"customer {customer.id} has a profile (profileId), but POWERBI_AUTH_MODE is MasterUser",
            )
        return customer

    def _customer_id(self, principal: Principal) -> str:
        rule = self.concern.customer_from
        if rule.kind == "claim":
            types = TENANT_CLAIMS if rule.value in TENANT_CLAIMS else (rule.value,)
            value = next((principal.claims[t] for t in types if principal.claims.get(t)), "")
            if not value:
                raise NotAllowed(
                    _NO_CUSTOMER, hint=f"(The principal has no {rule.value} claim: POWERBI_CUSTOMER_FROM.)"
                )
            found = {canonical_id(value)}
        else:
            prefix = rule.value.lower()
            found = {
                canonical_id(role[len(prefix) :])
                for role in principal.roles
                if role.lower().startswith(prefix) and role[len(prefix) :].strip()
            }
        if len(found) != 1:
            raise NotAllowed(
                _NO_CUSTOMER,
                hint=f"(The principal has {len(found)} roles starting with {rule.value}, not one: "
                "POWERBI_CUSTOMER_FROM.)",
            )
        customer_id = found.pop()
        if len(customer_id) > MAX_ID_LENGTH or any(c in customer_id for c in "/\\#?") or not customer_id.isprintable():
            raise NotAllowed(_NO_CUSTOMER, hint="(The principal's customer id cannot be a customer id.)")
        return customer_id

"""The doctor's customers section: for up to 50 customers of the directory, what ``python -m shared.customers
check`` checks (each profile sees each of its workspaces, one Power BI call each), and a FAIL for a customer
with a profile when the function signs in as a master user (profiles belong to service principals).
"""

from __future__ import annotations

from itertools import islice
from typing import Protocol

import requests

from shared.clock import Clock
from shared.customers.admin import PowerBIAdmin
from shared.customers.directory import Customer
from shared.customers.onboard import check_customer
from shared.customers.store import Invalid, SettingStore, Store, TableStore, operator_table
from shared.errors import EmbedError
from shared.powerbi import TokenSource
from shared.settings import Settings

MAX_CHECKED = 50


class Checklist(Protocol):
    """What this section needs of the doctor's report."""

    def section(self, title: str) -> None: ...

    def ok(self, text: str) -> None: ...

    def warn(self, text: str, fix: str = "") -> None: ...

    def fail(self, text: str, fix: str = "") -> None: ...


def directory_store(settings: Settings) -> Store | None:
    customers = settings.customers
    if customers is None:
        return None
    if customers.source == "table":
        return TableStore(operator_table(customers), customers.table)
    return SettingStore(customers.customers)


def check_customers(
    settings: Settings, tokens: TokenSource, report: Checklist, clock: Clock, session: requests.Session | None = None
) -> bool:
    """The customers section; True when every customer checked is fine. Nothing to check without a source."""
    store = directory_store(settings)
    if store is None:
        return True
    report.section(f"Customers ({store.description}, up to {MAX_CHECKED})")
    try:
        entries = list(islice(store.entries(), MAX_CHECKED + 1))
    except EmbedError as error:
        report.fail(error.message)
        return False
    if not entries:
        report.warn("no customer yet", "onboard one: python -m shared.customers add ID --name NAME")
        return True
    admin = PowerBIAdmin(settings.powerbi.api_url, session, tokens, clock)
    ok = True
    for entry in entries[:MAX_CHECKED]:
        ok = _check_one(settings, admin, entry, report) and ok
    if len(entries) > MAX_CHECKED:
        report.warn(
            f"only the first {MAX_CHECKED} customers were checked", "check all: python -m shared.customers check"
        )
    return ok


def _check_one(settings: Settings, admin: PowerBIAdmin, entry: Customer | Invalid, report: Checklist) -> bool:
    if isinstance(entry, Invalid):
        report.fail(f"customer {entry.id}: not a valid entry: {entry.problem}", "correct or remove the entry")
        return False
    if entry.profile_id and settings.sign_in.mode == "MasterUser":
        report.fail(
            f"customer {entry.id} has a profile ({entry.profile_id}), but the function signs in as a master user: "
            "service principal profiles belong to service principals",
            "sign in as a service principal or managed identity (POWERBI_AUTH_MODE), or remove the customer's "
            "profileId and make the master user a member of its workspaces",
        )
        return False
    good = True
    for passed, text, fix in check_customer(admin, entry):
        if passed:
            report.ok(text)
        else:
            report.fail(text, fix)
            good = False
    return good

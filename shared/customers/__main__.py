"""Onboard the customers of a many-customer function: ``python -m shared.customers``.

    python -m shared.customers add ID --name NAME [--capacity CAPACITY_ID] [--import FILE.pbix]
    python -m shared.customers list
    python -m shared.customers check [ID]
    python -m shared.customers remove ID [--delete-workspace]

It runs with the function's settings (the environment over ``local.settings.json``, or ``--settings FILE``),
signed in as the function signs in: a service principal or a managed identity, since service principal
profiles belong to service principals. With ``POWERBI_CUSTOMERS_SOURCE=table`` it writes the table; with
``setting`` (or none yet) it prints the JSON object to put in POWERBI_CUSTOMERS. Exit status: 0 done (or
nothing to do), 1 a step or check failed, 2 the command or the settings are wrong. Nothing it prints
carries a secret or a token.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import requests

from shared.clock import SYSTEM_CLOCK, Clock
from shared.customers.admin import PowerBIAdmin
from shared.customers.directory import Customer
from shared.customers.onboard import Onboarder, Onboarding
from shared.customers.store import Invalid, SettingStore, Store, TableStore, operator_table
from shared.doctor import load_env
from shared.entra import EntraTokenProvider
from shared.errors import ConfigurationError, EmbedError
from shared.http import HttpClient, new_session
from shared.settings import Settings, parse_guid

PROFILE_MODES = ("ServicePrincipal", "ManagedIdentity")
# Before any customer exists the `setting` directory cannot be read: sign in with the rest of the settings.
_DIRECTORY_SETTINGS = (
    "POWERBI_CUSTOMERS_SOURCE",
    "POWERBI_CUSTOMERS",
    "POWERBI_CUSTOMERS_TABLE",
    "POWERBI_CUSTOMERS_CONNECTION",
    "POWERBI_CUSTOMER_FROM",
    "POWERBI_CUSTOMERS_TTL_SECONDS",
)
_PLACEHOLDER_WORKSPACE = "00000000-0000-0000-0000-000000000000"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--settings", type=Path, default=argparse.SUPPRESS, help="a local.settings.json (default: ./ if any)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m shared.customers", description=(__doc__ or "").split("\n\n")[0], parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", parents=[common], help="onboard a customer (idempotent)")
    add.add_argument("id", help="the customer key the signed-in user's principal yields")
    add.add_argument("--name", required=True, help="the customer's name: its profile's and its workspace's")
    add.add_argument("--capacity", help="the capacity (GUID) to assign the workspace to")
    add.add_argument("--import", dest="pbix", type=Path, help="a .pbix file to import into the workspace")
    commands.add_parser("list", parents=[common], help="list the customers of the directory")
    check = commands.add_parser("check", parents=[common], help="check that each profile sees its workspaces")
    check.add_argument("id", nargs="?", help="only this customer")
    remove = commands.add_parser("remove", parents=[common], help="remove a customer from the directory")
    remove.add_argument("id")
    remove.add_argument("--delete-workspace", action="store_true", help="also delete its workspaces and profile")
    return parser


def load(values: Mapping[str, str]) -> tuple[Settings, Store]:
    """The function's settings and its customer directory (ConfigurationError names what is wrong)."""
    # The platform sets WEBSITE_AUTH_ENABLED for the function, which believes signed-in principals only
    # behind it; the command serves no request and reads no principal, so it runs without it.
    values = {**values, "WEBSITE_AUTH_ENABLED": "True"}
    source = (values.get("POWERBI_CUSTOMERS_SOURCE") or "none").strip().lower()
    if source == "table" or (source == "setting" and (values.get("POWERBI_CUSTOMERS") or "").strip()):
        settings = Settings.from_env(values)
        customers = settings.customers
        if customers is None:  # not reached: a source was read
            raise ConfigurationError("POWERBI_CUSTOMERS_SOURCE is not set")
        if customers.source == "table":
            return settings, TableStore(operator_table(customers), customers.table)
        return settings, SettingStore(customers.customers)
    # No directory yet: sign in with the other settings; `add` prints the first customer's object.
    rest = {k: v for k, v in values.items() if k not in _DIRECTORY_SETTINGS}
    if not (rest.get("POWERBI_WORKSPACE_ID") or rest.get("POWERBI_ALLOWED_WORKSPACES") or "").strip():
        rest["POWERBI_WORKSPACE_ID"] = _PLACEHOLDER_WORKSPACE
    return Settings.from_env(rest), SettingStore((), enabled=source == "setting")


def _plan(args: argparse.Namespace) -> Onboarding:
    """The add command's arguments, checked before any call (ValueError says what is wrong)."""
    Customer(args.id, (_PLACEHOLDER_WORKSPACE,))  # the id's rules
    if not args.name.strip():
        raise ValueError("--name must not be empty")
    capacity = None
    if args.capacity is not None and (capacity := parse_guid(args.capacity)) is None:
        raise ValueError("--capacity must be a capacity id (a GUID)")
    pbix: Path | None = args.pbix
    if pbix is not None and (pbix.suffix.lower() != ".pbix" or not pbix.is_file()):
        raise ValueError(f"--import must name an existing .pbix file ({pbix.name} is not one)")
    return Onboarding(args.id, args.name.strip(), capacity, pbix)


def list_customers(store: Store, out: TextIO) -> int:
    entries = list(store.entries())
    print(f"{len(entries)} customer(s) in the {store.description}", file=out)
    for entry in entries:
        if isinstance(entry, Invalid):
            print(f"  INVALID {entry.id}: {entry.problem}", file=out)
            continue
        profile = f"profile {entry.profile_id}" if entry.profile_id else "no profile (the app itself)"
        workspaces = ", ".join(entry.workspaces)
        print(f"  {entry.id}  {entry.display_name or '-'}  {profile}  workspaces {workspaces}", file=out)
    return 1 if any(isinstance(e, Invalid) for e in entries) else 0


def _checked(store: Store, customer_id: str | None, out: TextIO) -> list[Customer] | None:
    """The customers to check, or None (after saying why) when there is nothing valid to check."""
    if customer_id is not None:
        customer = store.get(customer_id)
        if customer is None:
            print(f"  FAIL  customer {customer_id} is not in the {store.description}", file=out)
            return None
        return [customer]
    customers: list[Customer] = []
    for entry in store.entries():
        if isinstance(entry, Invalid):
            print(f"  FAIL  customer {entry.id}: not a valid entry: {entry.problem}", file=out)
            return None
        customers.append(entry)
    return customers


def run(args: argparse.Namespace, settings: Settings, store: Store, out: TextIO, onboarder: Onboarder) -> int:
    if args.command == "list":
        return list_customers(store, out)
    if args.command == "add":
        return onboarder.add(_plan(args))
    if args.command == "remove":
        return onboarder.remove(args.id, args.delete_workspace)
    customers = _checked(store, args.id, out)
    if customers is None:
        return 1
    print(
        f"Checking {len(customers)} customer(s) of the {store.description} against {settings.powerbi.api_url}", file=out
    )
    return onboarder.check(customers)


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    session: requests.Session | None = None,
) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    loaded = load_env(getattr(args, "settings", None), os.environ if env is None else env)
    try:
        settings, store = load(loaded.values)
    except ConfigurationError as error:
        print("The settings are not usable:", file=out)
        for problem in error.problems:
            print(f"  - {problem}", file=out)
        return 2
    if settings.sign_in.mode not in PROFILE_MODES:
        print(
            f"python -m shared.customers runs under POWERBI_AUTH_MODE ServicePrincipal or ManagedIdentity, not "
            f"{settings.sign_in.mode}: service principal profiles belong to service principals.",
            file=out,
        )
        return 2
    session = session or new_session()  # one connection pool for Entra ID and Power BI
    tokens = EntraTokenProvider(settings, HttpClient(session, clock), clock)
    onboarder = Onboarder(PowerBIAdmin(settings.powerbi.api_url, session, tokens, clock), store, out, clock)
    try:
        return run(args, settings, store, out, onboarder)
    except ValueError as error:
        print(f"error: {error}", file=out)
        return 2
    except EmbedError as error:
        print(f"  FAIL  {error.message}", file=out)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The doctor: a checklist a person can act on, for when the function does not work yet.

    python -m shared.doctor            # check the environment over local.settings.json, as the host does
    python -m shared.doctor --list     # list workspaces, reports and dashboards with their ids
    python -m shared.doctor --settings path/to/local.settings.json

It reads the settings the way the function does, signs in the way the function does,
and asks Power BI what the function would ask, explaining each failure with its cause
and fix. Secrets are shown only as set or unset. The exit status is 0 only when an
embed token could be generated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import requests

from shared.clock import SYSTEM_CLOCK, Deadline
from shared.embed import EmbedService, Kind
from shared.entra import AccessToken
from shared.errors import ConfigurationError, EmbedError, Throttled
from shared.http import call_context
from shared.powerbi import Bearer
from shared.settings import CLOUDS, KEY_VAULT_REFERENCE, SECRET_SETTINGS, SETTING_NAMES, Settings, ignored_settings

DEADLINE_SECONDS = 60.0  # a person is waiting, but the doctor makes many calls
_PLACEHOLDER_WORKSPACE = "00000000-0000-0000-0000-000000000000"


class Report:
    """Prints the checklist: one line a check, a fix under each failure."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def section(self, title: str) -> None:
        print(f"\n{title}", file=self.out)

    def line(self, mark: str, text: str, fix: str = "") -> None:
        print(f"  {mark:<5} {text}", file=self.out)
        if fix:
            print(f"        fix: {fix}", file=self.out)

    def ok(self, text: str) -> None:
        self.line("ok", text)

    def warn(self, text: str, fix: str = "") -> None:
        self.line("warn", text, fix)

    def fail(self, text: str, fix: str = "") -> None:
        self.line("FAIL", text, fix)


ENVIRONMENT = "the environment"


@dataclass(frozen=True)
class Loaded:
    """The settings the function would run with, and where each value came from."""

    values: dict[str, str]
    origins: dict[str, str]  # setting name -> "the environment" or the settings file's path
    description: str  # for the section title


def load_env(settings_file: Path | None, environ: Mapping[str, str]) -> Loaded:
    """The settings as the function sees them: environment variables over local.settings.json.

    Core Tools and the Functions host copy a ``Values`` entry into the environment only when
    the environment has no (non-empty) value of that name, so the environment wins.
    """
    path = settings_file or Path("local.settings.json")
    if not path.is_file():
        if settings_file:
            raise SystemExit(f"{settings_file} does not exist")
        return Loaded(dict(environ), {name: ENVIRONMENT for name in environ}, "the environment")
    file_values = {k: str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).get("Values", {}).items()}
    values: dict[str, str] = dict(environ)
    origins = {name: ENVIRONMENT for name in environ}
    for name, value in file_values.items():
        if environ.get(name):
            origins[name] = f"{ENVIRONMENT}, over {path}"
        else:
            values[name], origins[name] = value, str(path)
    return Loaded(values, origins, f"the environment, then {path}")


def check_settings(loaded: Loaded, report: Report, listing: bool = False) -> Settings | None:
    env = loaded.values
    report.section(f"Settings (from {loaded.description})")
    unset = []
    ignored = ignored_settings(env)
    for name in SETTING_NAMES:
        value = env.get(name, "").strip()
        origin = loaded.origins.get(name, ENVIRONMENT)
        if not value:
            unset.append(name)
        elif KEY_VAULT_REFERENCE.match(value) and name in ignored:
            # Not read in this sign-in mode, so not an error; but it would fail once the mode changes.
            report.warn(
                f"{name}: an unresolved Key Vault reference (from {origin}), not used by this POWERBI_AUTH_MODE",
                "remove the setting, or give the app's managed identity 'Key Vault Secrets User' on the vault",
            )
        elif KEY_VAULT_REFERENCE.match(value):
            report.fail(
                f"{name}: an unresolved Key Vault reference (from {origin})",
                "give the app's managed identity 'Key Vault Secrets User' on the vault and check the secret "
                "exists; locally, `az login` first",
            )
        else:
            report.line("", f"{name} = {'(set)' if name in SECRET_SETTINGS else value}  (from {origin})")
    report.line("", f"unset (defaults apply): {', '.join(unset)}")
    if listing and not (env.get("POWERBI_WORKSPACE_ID") or env.get("POWERBI_ALLOWED_WORKSPACES")):
        # --list needs only the sign-in settings: finding the workspace id is what it is for.
        env = {**env, "POWERBI_WORKSPACE_ID": _PLACEHOLDER_WORKSPACE}
    try:
        settings = Settings.from_env(env)
    except ConfigurationError as error:
        for problem in error.problems:  # each whole, one line each: a problem may contain ": " or "; "
            report.fail(problem)
        return None
    report.ok(f"complete: {settings.sign_in.mode} ({settings.sign_in.client_type}), cloud {settings.sign_in.cloud}")
    return settings


def check_shared_cache(settings: Settings, report: Report) -> None:
    """The shared cache (POWERBI_CACHE_URL): warnings only, since the function works without it."""
    config = settings.shared_cache
    if config is None:
        return
    from shared.shared_cache import SharedCache, probe

    where = urlsplit(config.url)
    auth = "Entra ID (the app's managed identity)" if config.uses_entra else "a password"
    report.section(f"Shared cache ({where.scheme}://{where.hostname}:{where.port or 6379}, {auth})")
    report.ok(f"POWERBI_CACHE_ENCRYPTION_KEY: {len(config.encryption_key)} bytes, AES-256-GCM")
    cache = SharedCache.create(settings)
    assert cache is not None
    for ok, text in probe(cache).lines:
        if ok:
            report.ok(text)
        else:
            report.warn(
                text,
                "the function still works, without the shared cache: each instance calls Power BI for itself",
            )


def identity(settings: Settings) -> str:
    if settings.sign_in.mode == "MasterUser":
        return f"master user {settings.sign_in.username}"
    if settings.sign_in.mode == "ServicePrincipal":
        return f"service principal {settings.sign_in.client_id}"
    return f"managed identity {settings.sign_in.managed_identity_client_id or '(system-assigned)'}"


def check_sign_in(service: EmbedService, report: Report) -> AccessToken | None:
    settings = service.settings
    report.section(
        f"Sign-in ({settings.sign_in.authority if settings.sign_in.mode != 'ManagedIdentity' else 'managed identity'})"
    )
    try:
        token = service.tokens.token(0)
    except EmbedError as error:
        report.fail(error.message, federated_fix(service, error))
        return None
    minutes = (token.expires_at - SYSTEM_CLOCK.now()) / 60
    report.ok(f"signed in as {identity(settings)}; the token is valid for {minutes:.0f} more minutes")
    return token


# Entra's refusals of a managed identity's token as the client assertion: no federated identity credential
# of the app registration matches its issuer (700211), its subject (700213), or all three with the audience.
_FEDERATED_REFUSALS = re.compile(r"AADSTS(700211|700213|70021)\b")


def federated_fix(service: EmbedService, error: EmbedError) -> str:
    """For POWERBI_CLIENT_ASSERTION=managed_identity refused by Entra: the credential the app must hold."""
    sign_in = service.settings.sign_in
    if not sign_in.client_assertion or not _FEDERATED_REFUSALS.search(error.message):
        return ""
    presented = service.tokens.assertion.presented() if service.tokens.assertion else {}
    tenant = presented.get("tid") or f"<the id of tenant {sign_in.tenant_id}>"
    host = CLOUDS[sign_in.cloud].authority_host
    issuer = presented.get("iss") or f"{host}/{tenant}/v2.0"
    subject = presented.get("sub") or (
        f"<the object id of identity {sign_in.managed_identity_client_id}: az identity list "
        f"--query \"[?clientId=='{sign_in.managed_identity_client_id}'].principalId\" -o tsv>"
    )
    audience = sign_in.federated_audience
    parameters = json.dumps({"name": "powerbi-embed", "issuer": issuer, "subject": subject, "audiences": [audience]})
    return (
        f"the app registration {sign_in.client_id} must trust the managed identity: a federated identity "
        f"credential with issuer {issuer}, subject {subject} and audience {audience} "
        f"(az ad app federated-credential create --id {sign_in.client_id} --parameters '{parameters}'; "
        "deploy/deploy.sh --federated adds it)"
    )


def list_everything(service: EmbedService, token: AccessToken, report: Report) -> bool:
    report.section("Workspaces, reports and dashboards this identity can see")
    try:
        workspaces = service.powerbi.get(token.value, "/groups")["value"]
        for workspace in workspaces:
            report.line("", f"workspace  {workspace['name']}  {workspace['id']}")
            for kind in ("reports", "dashboards"):
                for item in service.powerbi.get(token.value, f"/groups/{workspace['id']}/{kind}")["value"]:
                    name = item.get("name") or item.get("displayName")
                    report.line("", f"  {kind[:-1]:<9}  {name}  {item['id']}")
    except EmbedError as error:
        report.fail(error.message, explain(error, service.settings))
        return False
    if not workspaces:
        report.warn(
            "no workspace: the identity is a member of none",
            "add it to a workspace as Member or Admin (Workspace → Manage access)",
        )
    return True


def check_power_bi(service: EmbedService, token: AccessToken, report: Report) -> bool:
    settings, powerbi = service.settings, service.powerbi
    report.section(f"Power BI ({settings.powerbi.api_url})")
    try:
        visible = {w["id"].lower(): w for w in powerbi.get(token.value, "/groups")["value"]}
    except EmbedError as error:
        report.fail(f"the workspaces could not be listed: {error.message}", explain(error, settings))
        return False
    report.ok(f"{len(visible)} workspace(s) visible to the {identity(settings)}")
    missing = False
    for workspace_id in sorted(settings.policy.allowed_workspaces):
        workspace = visible.get(workspace_id)
        if workspace is None:
            missing = True
            report.fail(
                f"workspace {workspace_id} is not among them",
                f"add the {identity(settings)} to the workspace as Member or Admin, or check POWERBI_WORKSPACE_ID",
            )
            continue
        report.ok(f"workspace {workspace['name']} ({workspace_id}): role {role(service, token, workspace_id)}")
        if not workspace.get("isOnDedicatedCapacity", False):
            report.warn(
                f"workspace {workspace['name']} is not on a capacity: Power BI issues only a limited number "
                "of trial embed tokens",
                "assign the workspace to a capacity (A, EM, P or F SKU) before production",
            )
    if missing:  # every later call would be refused for the same reason
        return False
    items = allowed_items(service, token, report)
    bearer = Bearer(service.tokens, 0)
    for kind, item_id, workspace_id in items:
        try:  # through the catalog, as a request reads them: one list call per workspace
            lookup = service.catalog.report if kind == "report" else service.catalog.dashboard
            item = lookup(bearer, workspace_id, item_id)
            report.ok(f"{kind} {item_id}: {item.embed_url}")
        except EmbedError as error:
            report.fail(f"{kind} {item_id}: {error.message}", explain(error, settings))
    if not items:
        report.fail("no report or dashboard to test with", "publish one to the workspace or set the allow-lists")
        return False
    kind, item_id, workspace_id = items[0]
    try:
        embed = service.embed(kind, item_id, workspace_id)
    except EmbedError as error:
        report.fail(f"test GenerateToken for {kind} {item_id}: {error.message}", explain(error, settings))
        return False
    report.ok(f"test GenerateToken for {kind} {item_id}: a token valid until {embed.to_json()['expiration']}")
    return True


def check_power_bi_or_customers(
    service: EmbedService, token: AccessToken, report: Report, session: requests.Session | None
) -> bool:
    """With a customer directory each customer brings its workspaces: check those (as ``python -m
    shared.customers check`` does, for up to 50) instead of the global ones."""
    if service.settings.customers is None:
        return check_power_bi(service, token, report)
    from shared.customers.checkup import check_customers

    return check_customers(service.settings, service.tokens, report, service.clock, session)


def role(service: EmbedService, token: AccessToken, workspace_id: str) -> str:
    """The identity's role in the workspace, when Power BI lets us read the member list."""
    settings = service.settings
    names = {
        n.lower()
        for n in (settings.sign_in.username, settings.sign_in.client_id, settings.sign_in.managed_identity_client_id)
        if n
    }
    try:
        users = service.powerbi.get(token.value, f"/groups/{workspace_id}/users")["value"]
    except EmbedError:
        return "unknown (the member list cannot be read)"
    for user in users:
        if {str(user.get("identifier", "")).lower(), str(user.get("emailAddress", "")).lower()} & names:
            return str(user.get("groupUserAccessRight", "unknown"))
    return "unknown (not found by name in the member list)"


def allowed_items(service: EmbedService, token: AccessToken, report: Report) -> list[tuple[Kind, str, str]]:
    """The allow-listed items, or, without allow-lists, those in the default workspace."""
    settings = service.settings
    workspace = settings.policy.workspace_id or sorted(settings.policy.allowed_workspaces)[0]
    items: list[tuple[Kind, str, str]] = []
    lists: list[tuple[Kind, frozenset[str] | None]] = [
        ("report", settings.policy.allowed_reports),
        ("dashboard", settings.policy.allowed_dashboards),
    ]
    for kind, allowed in lists:
        if allowed is not None:
            items += [(kind, item_id, workspace) for item_id in sorted(allowed)]
            continue
        try:
            found = service.powerbi.get(token.value, f"/groups/{workspace}/{kind}s")["value"]
        except EmbedError as error:
            report.fail(f"the {kind}s of workspace {workspace} could not be listed: {error.message}")
            continue
        items += [(kind, str(item["id"]).lower(), workspace) for item in found]
    return items


def explain(error: EmbedError, settings: Settings) -> str:
    """Cause and fix for Power BI's common refusals on this path."""
    upstream = error.upstream
    if isinstance(error, Throttled):
        return "wait and try again; Power BI is limiting calls"
    if upstream is None:
        return ""
    text = f"{upstream.code} {upstream.message}".lower()
    if "effective identity" in text or "effectiveidentity" in text:
        return (
            "the dataset uses row-level security, so every token needs an identity: set "
            "POWERBI_RLS_USERNAME_SOURCE=principal (and POWERBI_RLS_ROLES if roles are required)"
        )
    # Power BI publishes no code for this; its message speaks of the embed tokens "exceeded" on a
    # "shared capacity", so match the words as well as a code that names a quota.
    if upstream.status == 403 and any(word in text for word in ("quota", "exceeded", "shared capacity")):
        return "the trial embed tokens are used up: assign the workspace to a capacity (A, EM, P or F SKU)"
    if upstream.status == 401 and settings.sign_in.mode != "MasterUser":
        return (
            "allow service principals in the Power BI admin portal (Tenant settings → Developer settings → "
            "'Service principals can use Fabric APIs', for a security group holding this identity), and add "
            "the identity to the workspace as Member or Admin"
        )
    if upstream.status == 401:
        return (
            "make the master user a Member or Admin of the workspace, and give the app the Power BI Service "
            "delegated permissions with admin consent"
        )
    if upstream.status == 403:
        return "check the identity's workspace role and the app's Power BI permissions"
    return ""


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    session: requests.Session | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list workspaces, reports and dashboards with their ids")
    parser.add_argument("--settings", type=Path, help="a local.settings.json (default: ./local.settings.json if any)")
    args = parser.parse_args(argv)
    report = Report(out or sys.stdout)
    loaded = load_env(args.settings, os.environ if environ is None else environ)
    settings = check_settings(loaded, report, listing=args.list)
    ok = False
    if settings is not None:
        check_shared_cache(settings, report)
        service = EmbedService.create(settings, session=session)
        with call_context(Deadline.after(SYSTEM_CLOCK, DEADLINE_SECONDS)):
            token = check_sign_in(service, report)
            if token is not None:
                ok = (
                    list_everything(service, token, report)
                    if args.list
                    else check_power_bi_or_customers(service, token, report, session)
                )
    report.section("Result: " + ("OK" if ok else "not working yet: fix the FAIL lines above, in order"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""A stand-in for the Azure CLI, for the deploy-script tests (run through the `az` wrapper beside it).

It records every call's arguments (one JSON line each, in $FAKE_AZ_LOG) and answers the
commands deploy/deploy.sh uses the way the real CLI does: JSON by default, `--query` and
`-o tsv|none`, exit code 3 with a "(ResourceNotFound)" message for a missing resource.
Resources live in a JSON state file ($FAKE_AZ_STATE), so a second run sees what the
first created. It enforces what Azure enforces and a broken script would trip over:
parents must exist first, Key Vault data-plane writes need the "Key Vault Secrets
Officer" role (the vault uses RBAC), and names follow Azure's rules. Like the real CLI,
`keyvault secret set` and `appsettings set` print the values they stored unless told
`-o none`. The zip given to config-zip is copied to $FAKE_AZ_CAPTURE before the script
deletes it. Only the standard library: the fake must start fast, ~25 times per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUBSCRIPTION = "6c1f3a52-0d5e-4b7a-9f3e-2a8d4e6b1c90"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEPLOYER_USER_ID = "0b5e2d4c-8a71-4f3e-9c62-d1e0f7a4b835"
DEPLOYER_APP_ID = "a3c9e1f7-5b2d-4e86-8f04-c7d1b2e9a640"
DEPLOYER_SP_ID = "e41d7b26-93c8-4a5f-b017-6f2c8d9e3a51"
SECRETS_OFFICER = "Key Vault Secrets Officer"

ALIASES = {"-g": "--resource-group", "-n": "--name", "-o": "--output", "-l": "--location", "-f": "--file"}
STORAGE_NAME = re.compile(r"^[a-z0-9]{3,24}$")
VAULT_NAME = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$")
REDIS_NAME = re.compile(r"^(?=.{1,60}$)[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")
PLATFORM_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION": "~4",
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=contosoembedst;AccountKey=fake-key",
}
IDENTITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$")
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$")


class AzError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def not_found(kind: str, name: str, group: str) -> AzError:
    return AzError(f"(ResourceNotFound) The Resource '{kind}/{name}' under resource group '{group}' was not found.", 3)


def stable_guid(*parts: str) -> str:
    return str(uuid.UUID(hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]))


def parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """Command words, then options: each option takes the values up to the next option."""
    words: list[str] = []
    options: dict[str, list[str]] = {}
    current: list[str] | None = None
    for arg in argv:
        if arg.startswith("-") and len(arg) > 1:
            current = options.setdefault(ALIASES.get(arg, arg), [])
        elif current is None:
            words.append(arg)
        else:
            current.append(arg)
    return tuple(words), options


class Fake:
    def __init__(self, state: dict[str, Any], options: dict[str, list[str]]) -> None:
        self.state = state
        self.options = options

    def opt(self, name: str, required: bool = True) -> str:
        values = self.options.get(name)
        if not values:
            if required:
                raise AzError(f"the following arguments are required: {name}", 2)
            return ""
        return values[0]

    def table(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = self.state.setdefault(name, {})
        return table

    def group(self, option: str = "--resource-group") -> dict[str, Any]:
        name = self.opt(option)
        if name not in self.table("groups"):
            raise AzError(f"(ResourceGroupNotFound) Resource group '{name}' could not be found.", 3)
        group: dict[str, Any] = self.table("groups")[name]
        return group

    def find(self, table: str, kind: str) -> dict[str, Any]:
        group, name = self.group()["name"], self.opt("--name")
        item: dict[str, Any] | None = self.table(table).get(name)
        if item is None or item["resourceGroup"] != group:
            raise not_found(kind, name, group)
        return item

    def resource(self, table: str, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
        group, name = self.group()["name"], self.opt("--name")
        if name in self.table(table):
            raise AzError(f"(Conflict) The resource '{kind}/{name}' already exists.", 1)
        item = {
            "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/{kind}/{name}",
            "name": name,
            "resourceGroup": group,
            "location": self.opt("--location", required=False) or self.group()["location"],
            **extra,
        }
        self.table(table)[name] = item
        return item

    def vault_by_name(self, name: str) -> dict[str, Any]:
        vault: dict[str, Any] | None = self.table("vaults").get(name)
        if vault is None:
            raise AzError(f"(VaultNotFound) Key Vault '{name}' was not found.", 3)
        return vault

    # -- commands --------------------------------------------------------------------------------

    def account_show(self) -> Any:
        if os.environ.get("FAKE_AZ_LOGGED_OUT"):
            raise AzError("Please run 'az login' to setup account.", 1)
        if os.environ.get("FAKE_AZ_USER_TYPE") == "servicePrincipal":
            user = {"name": DEPLOYER_APP_ID, "type": "servicePrincipal"}
        else:
            user = {"name": "deployer@contoso.com", "type": "user"}
        return {"id": SUBSCRIPTION, "tenantId": TENANT, "name": "Contoso", "user": user}

    def signed_in_user(self) -> Any:
        return {"id": DEPLOYER_USER_ID, "userPrincipalName": "deployer@contoso.com"}

    def sp_show(self) -> Any:
        if self.opt("--id") != DEPLOYER_APP_ID:
            raise AzError(f"Service principal '{self.opt('--id')}' doesn't exist", 3)
        return {"id": DEPLOYER_SP_ID, "appId": DEPLOYER_APP_ID}

    def group_show(self) -> Any:
        return self.group("--name")

    def group_create(self) -> Any:
        name, location = self.opt("--name"), self.opt("--location")
        group = {"id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}", "name": name, "location": location}
        return self.table("groups").setdefault(name, group)

    def storage_show(self) -> Any:
        return self.find("storage", "Microsoft.Storage/storageAccounts")

    def storage_create(self) -> Any:
        if not STORAGE_NAME.match(self.opt("--name")):
            raise AzError("(AccountNameInvalid) not a valid storage account name.", 1)
        sku = self.opt("--sku", required=False) or "Standard_RAGRS"
        endpoints = {"table": f"https://{self.opt('--name')}.table.core.windows.net/"}
        extra = {"sku": {"name": sku}, "primaryEndpoints": endpoints}
        return self.resource("storage", "Microsoft.Storage/storageAccounts", extra)

    def app_show(self) -> Any:
        return self.find("apps", "Microsoft.Web/sites")

    def app_create(self) -> Any:
        if not APP_NAME.match(self.opt("--name")):
            raise AzError("Invalid function app name.", 1)
        self.group()
        storage = self.opt("--storage-account")
        if storage not in self.table("storage"):
            raise AzError(f"Storage account '{storage}' not found.", 3)
        flex = {
            "location": self.opt("--flexconsumption-location"),
            "runtime": self.opt("--runtime"),
            "runtimeVersion": self.opt("--runtime-version"),
        }
        host = f"{self.opt('--name')}.azurewebsites.net"
        config = {"runtime": {"name": flex["runtime"], "version": flex["runtimeVersion"]}}  # Flex Consumption's
        extra = {"defaultHostName": host, "flex": flex, "functionAppConfig": config, "identity": None}
        app = self.resource("apps", "Microsoft.Web/sites", extra)
        # The platform's own settings, which deploy.sh must never touch.
        self.table("appsettings")[app["name"]] = dict(PLATFORM_SETTINGS)
        return app

    def identity_show(self) -> Any:
        return self.app_show()["identity"]

    def identity_assign(self) -> Any:
        """``--identities [system]`` and/or user-assigned identities' resource ids, added to what the app has."""
        app = self.app_show()
        identity = app["identity"] or {"type": "None", "userAssignedIdentities": None}
        for wanted in self.options.get("--identities", ["[system]"]):
            if wanted == "[system]":
                identity.update(principalId=stable_guid("mi", app["id"]), tenantId=TENANT)
            else:
                found = next((i for i in self.table("identities").values() if i["id"].lower() == wanted.lower()), None)
                if found is None:
                    raise AzError(f"(ResourceNotFound) The Resource '{wanted}' was not found.", 3)
                assigned = identity.get("userAssignedIdentities") or {}
                assigned[found["id"]] = {"clientId": found["clientId"], "principalId": found["principalId"]}
                identity["userAssignedIdentities"] = assigned
        kinds = [k for k, on in (("SystemAssigned", "principalId" in identity), ("UserAssigned", identity.get(
            "userAssignedIdentities"))) if on]  # fmt: skip
        identity["type"] = ", ".join(kinds)
        app["identity"] = identity
        return identity

    # -- user-assigned identities and federated identity credentials, for deploy.sh --federated ---------------

    def user_identity_show(self) -> Any:
        return self.find("identities", "Microsoft.ManagedIdentity/userAssignedIdentities")

    def user_identity_create(self) -> Any:
        if not IDENTITY_NAME.match(self.opt("--name")):
            raise AzError("(InvalidResourceName) not a valid user-assigned identity name.", 1)
        name = f"{self.group()['name']}/{self.opt('--name')}"
        extra = {"clientId": stable_guid("uami-client", name), "principalId": stable_guid("uami", name)}
        return self.resource("identities", "Microsoft.ManagedIdentity/userAssignedIdentities", {
            **extra, "tenantId": TENANT})  # fmt: skip

    def federated_credentials(self) -> list[dict[str, Any]]:
        app_id = self.opt("--id")
        credentials: list[dict[str, Any]] = self.table("federated_credentials").setdefault(app_id, [])
        return credentials

    def federated_list(self) -> Any:
        return self.federated_credentials()

    def federated_create(self) -> Any:
        """Graph's rules: name, issuer, subject and audiences required; the name and the (issuer, subject)
        pair unique per app registration."""
        try:
            parameters = json.loads(self.opt("--parameters"))
        except ValueError as exc:
            raise AzError(f"--parameters is not valid JSON: {exc}", 2) from exc
        missing = [k for k in ("name", "issuer", "subject", "audiences") if not parameters.get(k)]
        if missing:
            raise AzError(f"(Request_BadRequest) missing property: {', '.join(missing)}", 1)
        if not CREDENTIAL_NAME.match(parameters["name"]):
            raise AzError("(Request_BadRequest) Invalid federated identity credential name.", 1)
        credentials = self.federated_credentials()
        for existing in credentials:
            if existing["name"] == parameters["name"] or (existing["issuer"], existing["subject"]) == (
                parameters["issuer"], parameters["subject"]):  # fmt: skip
                raise AzError("(Request_BadRequest) FederatedIdentityCredential already exists.", 1)
        credential = {"id": stable_guid("fic", self.opt("--id"), parameters["name"]), **parameters}
        credentials.append(credential)
        return credential

    def appsettings_set(self) -> Any:
        settings = self.table("appsettings").setdefault(self.app_show()["name"], {})
        for pair in self.options.get("--settings", []):
            name, sep, value = pair.partition("=")
            if not sep:
                raise AzError(f"usage error: --settings expects KEY=VALUE, got '{pair}'", 2)
            settings[name] = value
        return [{"name": k, "value": v, "slotSetting": False} for k, v in settings.items()]

    def appsettings_list(self) -> Any:
        settings = self.table("appsettings").setdefault(self.app_show()["name"], {})
        return [{"name": k, "value": v, "slotSetting": False} for k, v in settings.items()]

    def appsettings_delete(self) -> Any:
        settings = self.table("appsettings").setdefault(self.app_show()["name"], {})
        names = self.options.get("--setting-names", [])
        if not names:
            raise AzError("the following arguments are required: --setting-names", 2)
        for name in names:
            settings.pop(name, None)
        return [{"name": k, "value": v, "slotSetting": False} for k, v in settings.items()]

    # -- generic Azure Resource Manager resources (a storage account's tables) -----------------------

    def resource_show(self) -> Any:
        resource_id = self.opt("--ids")
        found = self.table("resources").get(resource_id.lower())
        if found is None:
            raise AzError(f"(ResourceNotFound) The Resource '{resource_id}' was not found.", 3)
        return found

    def resource_create(self) -> Any:
        resource_id = self.opt("--id")
        match = re.fullmatch(
            r"(?i)(/subscriptions/.+/storageAccounts/[^/]+)/tableServices/default/tables/([^/]+)", resource_id
        )
        if match is None:
            raise AzError(f"fake az: only storage tables are created with 'az resource create', not {resource_id}", 2)
        if not any(item["id"] == match.group(1) for item in self.table("storage").values()):
            raise AzError(f"(ParentResourceNotFound) '{match.group(1)}' was not found.", 3)
        if resource_id.lower() in self.table("resources"):
            raise AzError(f"(Conflict) The resource '{resource_id}' already exists.", 1)
        properties = json.loads(self.opt("--properties"))
        table = {
            "id": resource_id,
            "name": match.group(2),
            "type": "Microsoft.Storage/storageAccounts/tableServices/tables",
        }
        self.table("resources")[resource_id.lower()] = table | {"properties": properties}
        return self.table("resources")[resource_id.lower()]

    def cors_show(self) -> Any:
        name = self.app_show()["name"]
        origins = self.table("cors").get(name, [])
        return {"allowedOrigins": origins, "supportCredentials": self.table("cors_credentials").get(name, False)}

    def cors_add(self) -> Any:
        origins = self.table("cors").setdefault(self.app_show()["name"], [])
        origins.extend(o for o in self.options.get("--allowed-origins", []) if o not in origins)
        return self.cors_show()

    def cors_credentials(self) -> Any:
        enable = self.opt("--enable").lower()
        if enable not in ("true", "false"):
            raise AzError(f"argument --enable: invalid choice: '{enable}' (choose from 'false', 'true')", 2)
        self.table("cors_credentials")[self.app_show()["name"]] = enable == "true"
        return self.cors_show()

    def config_zip(self) -> Any:
        app = self.app_show()
        src = Path(self.opt("--src"))
        if not src.is_file():
            raise AzError(f"Could not find file '{src}'", 2)
        deployments = self.state.setdefault("deployments", [])
        capture = Path(os.environ.get("FAKE_AZ_CAPTURE", Path(os.environ["FAKE_AZ_STATE"]).parent))
        copy = capture / f"package-{len(deployments) + 1}.zip"
        shutil.copyfile(src, copy)
        deployments.append({"app": app["name"], "zip": str(copy), "buildRemote": self.opt("--build-remote", False)})
        return None  # the real command prints progress to stderr only

    def vault_show(self) -> Any:
        return self.find("vaults", "Microsoft.KeyVault/vaults")

    def vault_create(self) -> Any:
        if not VAULT_NAME.match(self.opt("--name")):
            raise AzError("(VaultNameNotValid) The vault name is not valid.", 1)
        rbac = self.opt("--enable-rbac-authorization", required=False).lower() == "true"
        vault = self.resource("vaults", "Microsoft.KeyVault/vaults", {})
        vault["properties"] = {"enableRbacAuthorization": rbac, "vaultUri": f"https://{vault['name']}.vault.azure.net/"}
        return vault

    def role_list(self) -> Any:
        assignee, role, scope = self.opt("--assignee"), self.opt("--role"), self.opt("--scope")
        return [
            a
            for a in self.state.setdefault("roles", [])
            if a["principalId"] == assignee and a["roleDefinitionName"] == role and scope.startswith(a["scope"])
        ]

    def role_create(self) -> Any:
        scope = self.opt("--scope")
        if not any(
            item["id"] == scope
            for table in ("vaults", "apps", "storage", "resources")
            for item in self.table(table).values()
        ):
            raise AzError(f"(InvalidResourceNamespace) scope '{scope}' does not exist.", 1)
        principal, role = self.opt("--assignee-object-id"), self.opt("--role")
        kind = self.opt("--assignee-principal-type")
        assignment = {
            "id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{stable_guid(scope, principal, role)}",
            "principalId": principal,
            "principalType": kind,
            "roleDefinitionName": role,
            "scope": scope,
        }
        roles = self.state.setdefault("roles", [])
        if any(a["id"] == assignment["id"] for a in roles):
            raise AzError("(RoleAssignmentExists) The role assignment already exists.", 1)
        roles.append(assignment)
        return assignment

    def secret_set(self) -> Any:
        vault = self.vault_by_name(self.opt("--vault-name"))
        caller = DEPLOYER_SP_ID if os.environ.get("FAKE_AZ_USER_TYPE") == "servicePrincipal" else DEPLOYER_USER_ID
        allowed = any(
            a["principalId"] == caller
            and a["roleDefinitionName"] == SECRETS_OFFICER
            and vault["id"].startswith(a["scope"])
            for a in self.state.setdefault("roles", [])
        )
        if not vault["properties"]["enableRbacAuthorization"] or not allowed:
            raise AzError("(Forbidden) Caller is not authorized to perform action on resource.", 1)
        name = self.opt("--name")
        if "--file" in self.options:
            path = Path(self.opt("--file"))
            value = path.read_text(encoding=self.opt("--encoding", required=False) or "utf-8")
            source: dict[str, str | None] = {"file": str(path), "mode": oct(stat.S_IMODE(path.stat().st_mode))}
        else:
            value, source = self.opt("--value"), {"file": None, "mode": None}
        versions = self.table("secrets").setdefault(f"{vault['name']}/{name}", [])
        versions.append({"value": value, **source})
        secret_id = f"{vault['properties']['vaultUri']}secrets/{name}/{stable_guid(name, str(len(versions)))}"
        return {"id": secret_id, "name": name, "value": value, "attributes": {"enabled": True}}

    def secret_show(self) -> Any:
        vault = self.vault_by_name(self.opt("--vault-name"))
        name = self.opt("--name")
        versions = self.table("secrets").get(f"{vault['name']}/{name}")
        if not versions:
            raise AzError(f"(SecretNotFound) A secret with (name/id) {name} was not found in this key vault.", 3)
        return {"id": f"{vault['properties']['vaultUri']}secrets/{name}", "name": name, "value": versions[-1]["value"]}

    # -- Azure Managed Redis (az redisenterprise), for deploy.sh --redis ---------------------------

    def redis_show(self) -> Any:
        return self.find("redis", "Microsoft.Cache/redisEnterprise")

    def redis_create(self) -> Any:
        if not REDIS_NAME.match(self.opt("--name")):
            raise AzError("(InvalidResourceName) not a valid Redis Enterprise cluster name.", 1)
        database = {
            name.lstrip("-"): self.opt(name, required=False)
            for name in (
                "--client-protocol",
                "--port",
                "--clustering-policy",
                "--eviction-policy",
                "--access-keys-auth",
            )
        }
        extra = {"sku": {"name": self.opt("--sku")}, "minimumTlsVersion": self.opt("--minimum-tls-version", False)}
        cluster = self.resource("redis", "Microsoft.Cache/redisEnterprise", {**extra, "database": database})
        cluster["hostName"] = f"{cluster['name']}.{cluster['location']}.redis.azure.net"
        cluster["accessPolicyAssignments"] = []
        return cluster

    def redis_cluster(self) -> dict[str, Any]:
        name, group = self.opt("--cluster-name"), self.group()["name"]
        cluster: dict[str, Any] | None = self.table("redis").get(name)
        if cluster is None or cluster["resourceGroup"] != group or self.opt("--database-name") != "default":
            raise not_found("Microsoft.Cache/redisEnterprise/databases", f"{name}/default", group)
        return cluster

    def redis_assignment_list(self) -> Any:
        return self.redis_cluster()["accessPolicyAssignments"]

    def redis_assignment_create(self) -> Any:
        cluster = self.redis_cluster()
        name = self.opt("--access-policy-assignment-name")
        if not re.fullmatch(r"[A-Za-z0-9]{1,60}", name):
            raise AzError("(InvalidParameter) the access policy assignment name takes letters and digits only.", 1)
        if any(a["name"] == name for a in cluster["accessPolicyAssignments"]):
            raise AzError(f"(Conflict) access policy assignment '{name}' already exists.", 1)
        assignment = {
            "name": name,
            "accessPolicyName": self.opt("--access-policy-name"),
            "user": {"objectId": self.opt("--object-id")},
        }
        cluster["accessPolicyAssignments"].append(assignment)
        return assignment

    # -- telemetry: Log Analytics, Application Insights, an ARM deployment (the workbook) --------------

    def workspace_show(self) -> Any:
        group, name = self.group()["name"], self.opt("--workspace-name")
        item: dict[str, Any] | None = self.table("workspaces").get(name)
        if item is None or item["resourceGroup"] != group:
            raise not_found("Microsoft.OperationalInsights/workspaces", name, group)
        return item

    def workspace_create(self) -> Any:
        group, name = self.group()["name"], self.opt("--workspace-name")
        if name in self.table("workspaces"):
            raise AzError(f"(Conflict) workspace '{name}' already exists.", 1)
        item = {
            "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/"
            f"Microsoft.OperationalInsights/workspaces/{name}",
            "name": name,
            "resourceGroup": group,
            "customerId": stable_guid("workspace", group, name),
            "location": self.opt("--location"),
        }
        self.table("workspaces")[name] = item
        return item

    def insights_show(self) -> Any:
        group, name = self.group()["name"], self.opt("--app")
        item: dict[str, Any] | None = self.table("insights").get(name)
        if item is None or item["resourceGroup"] != group:
            raise not_found("Microsoft.Insights/components", name, group)
        return item

    def insights_create(self) -> Any:
        group, name, location = self.group()["name"], self.opt("--app"), self.opt("--location")
        workspace = self.opt("--workspace")
        if not any(w["id"] == workspace for w in self.table("workspaces").values()):
            raise AzError(f"(WorkspaceNotFound) workspace '{workspace}' was not found.", 3)
        if name in self.table("insights"):
            raise AzError(f"(Conflict) component '{name}' already exists.", 1)
        key = stable_guid("ikey", group, name)
        item = {
            "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/"
            f"Microsoft.Insights/components/{name}",
            "name": name,
            "resourceGroup": group,
            "location": location,
            "kind": self.opt("--kind"),
            "workspaceResourceId": workspace,
            "instrumentationKey": key,
            "connectionString": f"InstrumentationKey={key};IngestionEndpoint=https://{location}-5.in.applicationinsights"
            f".azure.com/;LiveEndpoint=https://{location}.livediagnostics.monitor.azure.com/",
        }
        self.table("insights")[name] = item
        return item

    def deployment_create(self) -> Any:
        group = self.group()["name"]
        template = json.loads(Path(self.opt("--template-file")).read_text(encoding="utf-8"))
        for resource in template["resources"]:
            key = f"{group}/{resource['type']}/{resource['name']}"
            self.table("deployed").setdefault(key, []).append(resource)  # every deployment of it, in order
        return {"name": self.opt("--name"), "properties": {"provisioningState": "Succeeded"}}


COMMANDS: dict[tuple[str, ...], Callable[[Fake], Any]] = {
    ("account", "show"): Fake.account_show,
    ("ad", "signed-in-user", "show"): Fake.signed_in_user,
    ("ad", "sp", "show"): Fake.sp_show,
    ("group", "show"): Fake.group_show,
    ("group", "create"): Fake.group_create,
    ("storage", "account", "show"): Fake.storage_show,
    ("storage", "account", "create"): Fake.storage_create,
    ("functionapp", "show"): Fake.app_show,
    ("functionapp", "create"): Fake.app_create,
    ("functionapp", "identity", "show"): Fake.identity_show,
    ("functionapp", "identity", "assign"): Fake.identity_assign,
    ("functionapp", "config", "appsettings", "set"): Fake.appsettings_set,
    ("functionapp", "config", "appsettings", "list"): Fake.appsettings_list,
    ("functionapp", "config", "appsettings", "delete"): Fake.appsettings_delete,
    ("identity", "show"): Fake.user_identity_show,
    ("identity", "create"): Fake.user_identity_create,
    ("ad", "app", "federated-credential", "list"): Fake.federated_list,
    ("ad", "app", "federated-credential", "create"): Fake.federated_create,
    ("resource", "show"): Fake.resource_show,
    ("resource", "create"): Fake.resource_create,
    ("functionapp", "cors", "show"): Fake.cors_show,
    ("functionapp", "cors", "add"): Fake.cors_add,
    ("functionapp", "cors", "credentials"): Fake.cors_credentials,
    ("functionapp", "deployment", "source", "config-zip"): Fake.config_zip,
    ("keyvault", "show"): Fake.vault_show,
    ("keyvault", "create"): Fake.vault_create,
    ("keyvault", "secret", "set"): Fake.secret_set,
    ("role", "assignment", "list"): Fake.role_list,
    ("role", "assignment", "create"): Fake.role_create,
    ("keyvault", "secret", "show"): Fake.secret_show,
    ("redisenterprise", "show"): Fake.redis_show,
    ("redisenterprise", "create"): Fake.redis_create,
    ("redisenterprise", "database", "access-policy-assignment", "list"): Fake.redis_assignment_list,
    ("redisenterprise", "database", "access-policy-assignment", "create"): Fake.redis_assignment_create,
    ("monitor", "log-analytics", "workspace", "show"): Fake.workspace_show,
    ("monitor", "log-analytics", "workspace", "create"): Fake.workspace_create,
    ("monitor", "app-insights", "component", "show"): Fake.insights_show,
    ("monitor", "app-insights", "component", "create"): Fake.insights_create,
    ("deployment", "group", "create"): Fake.deployment_create,
}


def query(data: Any, expression: str) -> Any:
    """The JMESPath subset the script may use: `a.b.c`, optionally after a `[]` projection."""
    if not re.fullmatch(r"(\[\]\.?)?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", expression):
        raise AzError(f"fake az: unsupported --query '{expression}'", 2)

    def path(item: Any, parts: list[str]) -> Any:
        for part in parts:
            item = item.get(part) if isinstance(item, dict) else None
        return item

    if expression.startswith("[]"):
        parts = [p for p in expression[2:].split(".") if p]
        return [path(item, parts) for item in data or []]
    return path(data, expression.split("."))


def render(data: Any, output: str) -> str:
    if output == "none" or data is None:
        return ""
    if output == "tsv":
        items = data if isinstance(data, list) else [data]
        lines = ["\t".join(map(str, i.values())) if isinstance(i, dict) else str(i) for i in items if i is not None]
        return "".join(line + "\n" for line in lines)
    return json.dumps(data, indent=2) + "\n"


def main(argv: list[str]) -> int:
    state_file = Path(os.environ["FAKE_AZ_STATE"])
    words, options = parse(argv)
    record = {"argv": argv, "env": sorted(k for k in os.environ if k.startswith("POWERBI_"))}
    with open(os.environ["FAKE_AZ_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {}
    try:
        command = COMMANDS.get(words)
        if command is None:
            raise AzError(f"'{' '.join(words)}' is misspelled or not recognized by the system.", 2)
        result = command(Fake(state, options))
        if "--query" in options:
            result = query(result, options["--query"][0])
        sys.stdout.write(render(result, (options.get("--output") or ["json"])[0]))
    except AzError as error:
        sys.stderr.write(f"ERROR: {error}\n")
        return error.code
    state_file.write_text(json.dumps(state, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

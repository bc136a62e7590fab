"""Settings: defaults, what each sign-in mode requires, and complaints that name settings, never values."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigurationError
from shared.settings import SETTING_NAMES, Settings, http_auth_level

CLIENT = "8c1f7d6e-2b4a-4e0f-9d3c-5a6b7c8d9e01"
WORKSPACE = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
OTHER = "3d9b93c6-7b6d-4801-a491-1738910904fd"
MASTER_USER = {
    "POWERBI_CLIENT_ID": CLIENT,
    "POWERBI_USERNAME": "embed@contoso.com",
    "POWERBI_PASSWORD": "pw-value-7731",
    "POWERBI_WORKSPACE_ID": WORKSPACE,
}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(env)
    return raised.value.message


def test_master_user_defaults() -> None:
    s = Settings.from_env(MASTER_USER)

    assert (s.sign_in.mode, s.sign_in.tenant_id, s.sign_in.client_type) == ("MasterUser", "organizations", "public")
    assert s.sign_in.authority == "https://login.microsoftonline.com/organizations"
    assert s.powerbi.api_url == "https://api.powerbi.com"
    assert s.powerbi.scope == "https://analysis.windows.net/powerbi/api/.default"
    assert s.policy.allowed_workspaces == {WORKSPACE}
    assert (s.policy.allowed_reports, s.policy.allowed_dashboards, s.policy.token_lifetime_minutes) == (
        None,
        None,
        None,
    )
    assert (s.policy.min_token_minutes, s.policy.deadline_seconds) == (10, 20.0)
    assert "pw-value-7731" not in repr(s)


def test_a_secret_makes_the_master_user_a_confidential_client() -> None:
    s = Settings.from_env({**MASTER_USER, "POWERBI_CLIENT_SECRET": "secret-4410"})

    assert s.sign_in.client_type == "confidential"
    assert "secret-4410" not in repr(s)


def test_service_principal_requires_tenant_and_secret_but_no_user() -> None:
    env = {"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_CLIENT_ID": CLIENT, "POWERBI_WORKSPACE_ID": WORKSPACE}

    message = problems(env)

    assert "POWERBI_TENANT_ID is required" in message
    assert "POWERBI_CLIENT_SECRET, POWERBI_CLIENT_CERTIFICATE(_PATH) or POWERBI_CLIENT_ASSERTION is required" in message
    assert "POWERBI_USERNAME" not in message
    s = Settings.from_env({**env, "POWERBI_TENANT_ID": "contoso.onmicrosoft.com", "POWERBI_CLIENT_SECRET": "x"})
    assert (s.sign_in.mode, s.sign_in.username, s.sign_in.password) == ("ServicePrincipal", None, None)


def test_every_problem_is_named_at_once_and_no_value_is_shown() -> None:
    message = problems(
        {
            "POWERBI_AUTH_MODE": "Magic-9913",
            "POWERBI_CLIENT_ID": "client-9913",
            "POWERBI_WORKSPACE_ID": WORKSPACE,
            "POWERBI_ALLOWED_REPORTS": "r-9913,",
            "POWERBI_AUTHORITY_HOST": "http://login-9913.example",
            "POWERBI_MIN_TOKEN_MINUTES": "ten-9913",
            "POWERBI_HTTP_AUTH_LEVEL": "open-9913",
        }
    )

    for name in (
        "POWERBI_AUTH_MODE",
        "POWERBI_CLIENT_ID must be a GUID",
        "POWERBI_ALLOWED_REPORTS",
        "POWERBI_AUTHORITY_HOST must be an https URL",
        "POWERBI_MIN_TOKEN_MINUTES must be a whole number",
        "POWERBI_HTTP_AUTH_LEVEL",
    ):
        assert name in message
    assert "9913" not in message


def test_a_workspace_is_required() -> None:
    env = {k: v for k, v in MASTER_USER.items() if k != "POWERBI_WORKSPACE_ID"}

    assert "POWERBI_WORKSPACE_ID (or POWERBI_ALLOWED_WORKSPACES) is required" in problems(env)
    assert Settings.from_env({**env, "POWERBI_ALLOWED_WORKSPACES": WORKSPACE}).policy.workspace_id is None


def test_allow_lists_are_canonical_guids() -> None:
    s = Settings.from_env(
        {
            **MASTER_USER,
            "POWERBI_ALLOWED_WORKSPACES": f" {WORKSPACE.upper()} , {OTHER}",
            "POWERBI_ALLOWED_REPORTS": OTHER,
        }
    )

    assert s.policy.allowed_workspaces == {WORKSPACE, OTHER}
    assert s.policy.allowed_reports == {OTHER}


def test_the_default_workspace_must_be_allowed() -> None:
    assert "POWERBI_WORKSPACE_ID must be one of POWERBI_ALLOWED_WORKSPACES" in problems(
        {**MASTER_USER, "POWERBI_ALLOWED_WORKSPACES": OTHER}
    )


def test_a_lifetime_no_longer_than_the_minimum_is_refused() -> None:
    message = problems({**MASTER_USER, "POWERBI_TOKEN_LIFETIME_MINUTES": "10"})

    assert "POWERBI_TOKEN_LIFETIME_MINUTES must be greater than POWERBI_MIN_TOKEN_MINUTES" in message
    assert (
        Settings.from_env({**MASTER_USER, "POWERBI_TOKEN_LIFETIME_MINUTES": "11"}).policy.token_lifetime_minutes == 11
    )


def test_a_key_vault_reference_the_sign_in_mode_does_not_use_is_no_error() -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-5521.vault.azure.net/secrets/pw/)"
    service_principal = {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_TENANT_ID": "contoso.onmicrosoft.com",
        "POWERBI_CLIENT_ID": CLIENT,
        "POWERBI_CLIENT_SECRET": "secret-4410",
        "POWERBI_WORKSPACE_ID": WORKSPACE,
    }

    s = Settings.from_env({**service_principal, "POWERBI_PASSWORD": reference, "POWERBI_USERNAME": reference})
    assert (s.sign_in.username, s.sign_in.password) == (None, None)
    managed = {"POWERBI_AUTH_MODE": "ManagedIdentity", "POWERBI_WORKSPACE_ID": WORKSPACE}
    s = Settings.from_env({**managed, "POWERBI_CLIENT_SECRET": reference, "POWERBI_CLIENT_CERTIFICATE": reference})
    assert (s.sign_in.client_secret, s.sign_in.client_certificate) == (None, None)
    # A setting the mode does use still fails, naming the setting.
    assert "POWERBI_CLIENT_SECRET is a Key Vault reference" in problems(
        {**service_principal, "POWERBI_CLIENT_SECRET": reference}
    )


def test_a_secret_is_used_exactly_as_set() -> None:
    s = Settings.from_env({**MASTER_USER, "POWERBI_PASSWORD": " pw 7731 ", "POWERBI_CLIENT_SECRET": "secret-4410\t "})

    assert (s.sign_in.password, s.sign_in.client_secret) == (" pw 7731 ", "secret-4410\t ")


def test_other_values_are_trimmed() -> None:
    s = Settings.from_env(
        {
            **MASTER_USER,
            "POWERBI_USERNAME": "  embed@contoso.com \n",
            "POWERBI_WORKSPACE_ID": f" {WORKSPACE} ",
            "POWERBI_CLIENT_ID": f"{CLIENT}\n",
            "POWERBI_AUTH_MODE": " MasterUser ",
            "POWERBI_RLS_ROLES": " Region , Manager ",
        }
    )

    assert (s.sign_in.username, s.sign_in.client_id, s.sign_in.mode) == ("embed@contoso.com", CLIENT, "MasterUser")
    assert (s.policy.workspace_id, s.rls.roles) == (WORKSPACE, ("Region", "Manager"))


def test_only_the_settings_module_reads_the_environment() -> None:
    """Every read goes through the one reader: elsewhere the environment is only passed to it."""
    root = Path(__file__).resolve().parent.parent
    reads = []
    for path in [root / "function_app.py", *sorted((root / "shared").glob("*.py"))]:
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else None
            is_environ = isinstance(target, ast.Attribute) and target.attr == "environ"
            if (is_environ and (isinstance(node, ast.Subscript) or getattr(node, "attr", "") != "environ")) or (
                isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb")
            ):
                reads.append(f"{path.name}:{node.lineno}")

    assert reads == []


@pytest.mark.parametrize(
    "reference",
    [
        "@Microsoft.KeyVault(SecretUri=https://kv-5521.vault.azure.net/secrets/pw/)",
        "@Microsoft.KeyVault(VaultName=kv-5521;SecretName=pw)",
    ],
)
def test_an_unresolved_key_vault_reference_is_a_configuration_error(reference: str) -> None:
    message = problems({**MASTER_USER, "POWERBI_PASSWORD": reference})

    assert "POWERBI_PASSWORD is a Key Vault reference the platform could not resolve" in message
    assert "Key Vault Secrets User" in message and "az login" in message
    assert "5521" not in message


@pytest.mark.parametrize(
    ("value", "level"),
    [("", "function"), ("anonymous", "anonymous"), ("ANONYMOUS", "anonymous"), ("bogus", "function")],
)
def test_http_auth_level(value: str, level: str) -> None:
    assert http_auth_level({"POWERBI_HTTP_AUTH_LEVEL": value}) == level


def test_the_example_settings_file_lists_every_setting() -> None:
    example = json.loads((Path(__file__).parent.parent / "local.settings.json.example").read_text())

    assert example["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert {name for name in example["Values"] if name.startswith("POWERBI_")} == set(SETTING_NAMES)


def test_row_level_security_pins_entra_id_and_takes_roles_from_the_setting_by_default() -> None:
    s = Settings.from_env(MASTER_USER)

    assert (s.rls.identity_provider, s.rls.allowed_tenants, s.rls.roles_source) == ("aad", None, "setting")
    assert s.rls.allowed_roles == frozenset()


def test_roles_from_the_principal_need_an_allow_list_and_a_principal() -> None:
    env = {**MASTER_USER, "POWERBI_RLS_ROLES_SOURCE": "principal"}

    message = problems(env)

    assert "POWERBI_RLS_ALLOWED_ROLES is required with POWERBI_RLS_ROLES_SOURCE=principal" in message
    assert "POWERBI_RLS_ROLES_SOURCE=principal needs POWERBI_RLS_USERNAME_SOURCE=principal" in message
    both = {**env, "POWERBI_RLS_ALLOWED_ROLES": "Region", "POWERBI_RLS_ROLES": "Region"}
    assert "set POWERBI_RLS_ROLES or POWERBI_RLS_ROLES_SOURCE=principal, not both" in problems(both)
    s = Settings.from_env(
        {
            **env,
            "POWERBI_RLS_ALLOWED_ROLES": " Region , Manager,",
            "POWERBI_RLS_USERNAME_SOURCE": "principal",
            "WEBSITE_AUTH_ENABLED": "true",
        }
    )
    assert (s.rls.roles_source, s.rls.allowed_roles) == ("principal", {"Region", "Manager"})


def test_bad_identity_settings_name_the_setting() -> None:
    message = problems(
        {
            **MASTER_USER,
            "POWERBI_RLS_IDENTITY_PROVIDER": "aad, github",
            "POWERBI_RLS_ALLOWED_TENANTS": "contoso.onmicrosoft.com",
            "POWERBI_RLS_ROLES_SOURCE": "claims",
        }
    )

    assert "POWERBI_RLS_IDENTITY_PROVIDER must be one identity provider name" in message
    assert "POWERBI_RLS_ALLOWED_TENANTS must be a comma-separated list of GUIDs" in message
    assert "POWERBI_RLS_ROLES_SOURCE must be setting or principal" in message
    assert "contoso" not in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"POWERBI_MIN_TOKEN_MINUTES": "31"}, "POWERBI_MIN_TOKEN_MINUTES must be a whole number from 0 to 30"),
        ({"POWERBI_MIN_TOKEN_MINUTES": "60"}, "POWERBI_MIN_TOKEN_MINUTES must be a whole number from 0 to 30"),
        (
            {"POWERBI_TOKEN_LIFETIME_MINUTES": "61"},
            "POWERBI_TOKEN_LIFETIME_MINUTES must be a whole number from 1 to 60",
        ),
        (
            {"POWERBI_TOKEN_LIFETIME_MINUTES": "10"},
            "POWERBI_TOKEN_LIFETIME_MINUTES must be greater than POWERBI_MIN_TOKEN_MINUTES",
        ),
        (
            {"POWERBI_TOKEN_LIFETIME_MINUTES": "20", "POWERBI_MIN_TOKEN_MINUTES": "30"},
            "POWERBI_TOKEN_LIFETIME_MINUTES must be greater than POWERBI_MIN_TOKEN_MINUTES",
        ),
    ],
)
def test_token_minutes_that_leave_no_token_to_reuse_are_refused(values: dict[str, str], expected: str) -> None:
    assert expected in problems({**MASTER_USER, **values})


def test_token_minutes_at_their_limits_are_accepted() -> None:
    s = Settings.from_env({**MASTER_USER, "POWERBI_MIN_TOKEN_MINUTES": "30", "POWERBI_TOKEN_LIFETIME_MINUTES": "60"})

    assert (s.policy.min_token_minutes, s.policy.token_lifetime_minutes) == (30, 60)


@pytest.mark.parametrize("tenant", ["", "organizations", "common", "Consumers"])
def test_a_service_principal_needs_a_tenant_not_an_alias(tenant: str) -> None:
    env = {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_CLIENT_ID": CLIENT,
        "POWERBI_CLIENT_SECRET": "secret-4410",
        "POWERBI_WORKSPACE_ID": WORKSPACE,
        "POWERBI_TENANT_ID": tenant,
    }

    message = problems(env)

    assert "POWERBI_TENANT_ID" in message
    assert "secret-4410" not in message


@pytest.mark.parametrize("tenant", ["organizations", "common", "consumers"])
def test_a_managed_identity_refuses_a_tenant_alias(tenant: str) -> None:
    env = {"POWERBI_AUTH_MODE": "ManagedIdentity", "POWERBI_WORKSPACE_ID": WORKSPACE, "POWERBI_TENANT_ID": tenant}

    assert "POWERBI_TENANT_ID must name the tenant" in problems(env)
    assert Settings.from_env({**env, "POWERBI_TENANT_ID": OTHER}).sign_in.mode == "ManagedIdentity"


def test_a_master_user_may_sign_in_through_organizations() -> None:
    assert Settings.from_env({**MASTER_USER, "POWERBI_TENANT_ID": "organizations"}).sign_in.tenant_id == "organizations"


def test_health_names_a_setting_that_cannot_work(call: Callable[..., Any], env: dict[str, str]) -> None:
    env["POWERBI_MIN_TOKEN_MINUTES"] = "60"

    response = call("/api/health")

    assert response.status_code == 500
    health = json.loads(response.get_body())
    assert health["status"] == "misconfigured"  # with details on (the env fixture's): the problems
    assert "POWERBI_MIN_TOKEN_MINUTES must be a whole number from 0 to 30" in health["problems"]

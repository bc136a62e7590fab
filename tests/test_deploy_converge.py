"""deploy/deploy.sh re-deploys that converge, the cache settings in every mode, --python and --federated,
against the stand-in az (tests/fake_az).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_az.fake_az import PLATFORM_SETTINGS, TENANT
from tests.test_deploy import VAULT, base_env, calls, changes, options, run, state, the, words

REFERENCE = "@Microsoft.KeyVault(SecretUri=https://contoso-embed-kv.vault.azure.net/secrets/{}/)"
CACHE_URL = "rediss://cache.contoso.com:10000"
CACHE_KEY = "q5Jx0cJ0e3W7mXo9rT2yVb8nK4sL1uH6dF3gA0pZ9cE="


def service_principal_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = base_env(tmp_path, **{"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_TENANT_ID": TENANT, **extra})
    del env["POWERBI_USERNAME"], env["POWERBI_PASSWORD"]
    return env


def app_settings(env: dict[str, str]) -> dict[str, str]:
    settings: dict[str, str] = state(env)["appsettings"]["contoso-embed"]
    return settings


def test_a_secret_then_certificate_redeploy_leaves_no_client_secret(tmp_path: Path) -> None:
    env = service_principal_env(tmp_path)
    first = run(env)
    assert first.returncode == 0, first.stderr
    assert app_settings(env)["POWERBI_CLIENT_SECRET"] == REFERENCE.format("powerbi-client-secret")

    pem = tmp_path / "client.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    del env["POWERBI_CLIENT_SECRET"], env["POWERBI_PROFILE_ID"]
    before = len(calls(env))
    second = run({**env, "POWERBI_CLIENT_CERTIFICATE_PATH": str(pem)})

    assert second.returncode == 0, second.stderr
    settings = app_settings(env)
    assert "POWERBI_CLIENT_SECRET" not in settings
    assert "POWERBI_PROFILE_ID" not in settings  # any setting of the function's that this run leaves out
    assert settings["POWERBI_CLIENT_CERTIFICATE"] == REFERENCE.format("powerbi-client-certificate")
    for name, value in PLATFORM_SETTINGS.items():  # not the function's: never touched
        assert settings[name] == value
    (delete,) = the(calls(env)[before:], "functionapp", "config", "appsettings", "delete")
    assert sorted(options(delete)["--setting-names"]) == ["POWERBI_CLIENT_SECRET", "POWERBI_PROFILE_ID"]
    (said,) = [line for line in second.stdout.splitlines() if line.startswith("==> removed ")]
    assert sorted(said.split(":")[0].split()[2:]) == ["POWERBI_CLIENT_SECRET", "POWERBI_PROFILE_ID"]
    assert said.endswith("in Azure from an earlier run, not set by this one")


def test_an_unchanged_redeploy_removes_nothing(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run(env).returncode == 0
    before = len(calls(env))
    again = run(env)
    assert again.returncode == 0, again.stderr
    assert the(calls(env)[before:], "functionapp", "config", "appsettings", "delete") == []
    assert "stale settings: none" in again.stdout


@pytest.mark.parametrize("mode", ["ServicePrincipal", "ManagedIdentity"])
def test_cache_settings_are_key_vault_references_in_every_mode(tmp_path: Path, mode: str) -> None:
    env = service_principal_env(
        tmp_path, POWERBI_AUTH_MODE=mode, POWERBI_CACHE_URL=CACHE_URL, POWERBI_CACHE_ENCRYPTION_KEY=CACHE_KEY
    )
    if mode == "ManagedIdentity":
        del env["POWERBI_CLIENT_SECRET"]

    result = run(env)

    assert result.returncode == 0, result.stderr
    settings = app_settings(env)
    assert settings["POWERBI_CACHE_URL"] == REFERENCE.format("powerbi-cache-url")
    assert settings["POWERBI_CACHE_ENCRYPTION_KEY"] == REFERENCE.format("powerbi-cache-encryption-key")
    secrets = state(env)["secrets"]
    assert secrets[f"{VAULT}/powerbi-cache-url"][-1]["value"] == CACHE_URL
    assert secrets[f"{VAULT}/powerbi-cache-encryption-key"][-1]["value"] == CACHE_KEY
    for call in calls(env):
        assert CACHE_URL not in call["argv"] and CACHE_KEY not in " ".join(call["argv"])


def test_a_dry_run_names_every_skipped_setting_with_its_reason(tmp_path: Path) -> None:
    env = service_principal_env(
        tmp_path,
        POWERBI_AUTH_MODE="ManagedIdentity",
        POWERBI_CACHE_URL=CACHE_URL,
        POWERBI_CACHE_ENCRYPTION_KEY=CACHE_KEY,
    )
    env["POWERBI_PASSWORD"] = "Pw-unused-1"

    result = run(env, "--dry-run")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "skipped POWERBI_PASSWORD: only MasterUser mode signs in with a password" in out
    assert "skipped POWERBI_CLIENT_SECRET: ManagedIdentity mode signs in as the app's identity" in out
    assert "--name powerbi-cache-url" in out and "--name powerbi-cache-encryption-key" in out
    assert "+ az functionapp config appsettings delete --name contoso-embed" in out
    assert calls(env) == []


def test_redis_makes_the_cache_settings_so_given_ones_are_skipped(tmp_path: Path) -> None:
    result = run(base_env(tmp_path, POWERBI_CACHE_URL=CACHE_URL), "--dry-run", "--redis")
    assert result.returncode == 0, result.stderr
    assert "skipped POWERBI_CACHE_URL: --redis makes it and stores it in Key Vault" in result.stdout


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.14"])
def test_python_picks_the_version_of_a_new_app(tmp_path: Path, version: str) -> None:
    env = base_env(tmp_path)
    result = run(env, "--python", version)
    assert result.returncode == 0, result.stderr
    (app,) = the(calls(env), "functionapp", "create")
    assert options(app)["--runtime-version"] == [version]


@pytest.mark.parametrize("version", ["3.10", "3.9", "three"])
def test_an_untested_python_is_refused_before_any_az_call(tmp_path: Path, version: str) -> None:
    env = base_env(tmp_path)
    result = run(env, "--python", version)
    assert result.returncode == 1
    assert "--python must be one of 3.11 3.12 3.13 3.14" in result.stderr
    assert calls(env) == []


def federated_credentials(env: dict[str, str]) -> list[dict[str, object]]:
    credentials: list[dict[str, object]] = state(env).get("federated_credentials", {}).get(env["POWERBI_CLIENT_ID"], [])
    return credentials


def test_federated_trusts_a_user_assigned_identity_and_stores_no_secret(tmp_path: Path) -> None:
    env = service_principal_env(tmp_path)
    first = run(env)  # a client secret first: --federated then replaces it
    assert first.returncode == 0, first.stderr
    before = len(calls(env))

    result = run(env, "--federated")

    assert result.returncode == 0, result.stderr
    azure = state(env)
    identity = azure["identities"]["contoso-embed-signin"]
    app_identity = azure["apps"]["contoso-embed"]["identity"]
    assert identity["id"] in app_identity["userAssignedIdentities"]
    assert app_identity["principalId"]  # the system-assigned identity (Key Vault) stays
    (credential,) = federated_credentials(env)
    assert credential["issuer"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert credential["subject"] == identity["principalId"]
    assert credential["audiences"] == ["api://AzureADTokenExchange"]
    settings = app_settings(env)
    assert settings["POWERBI_CLIENT_ASSERTION"] == "managed_identity"
    assert settings["POWERBI_MANAGED_IDENTITY_CLIENT_ID"] == identity["clientId"]
    assert "POWERBI_CLIENT_SECRET" not in settings  # the old reference is removed
    assert "skipped POWERBI_CLIENT_SECRET: --federated signs in with the managed identity's token" in result.stdout
    assert the(calls(env)[before:], "keyvault", "secret", "set") == []  # nothing secret stored

    again_from = len(calls(env))
    again = run(env, "--federated")
    assert again.returncode == 0, again.stderr
    assert changes(calls(env)[again_from:]) == []
    assert "trusts identity contoso-embed-signin: yes" in again.stdout
    assert len(federated_credentials(env)) == 1


@pytest.mark.parametrize(
    ("cloud", "issuer", "audience"),
    [
        ("USGovHigh", "https://login.microsoftonline.us/", "api://AzureADTokenExchangeUSGov"),
        ("China", "https://login.chinacloudapi.cn/", "api://AzureADTokenExchangeChina"),
        ("USGov", "https://login.microsoftonline.com/", "api://AzureADTokenExchange"),
    ],
)
def test_federated_uses_the_clouds_issuer_and_audience(tmp_path: Path, cloud: str, issuer: str, audience: str) -> None:
    env = service_principal_env(tmp_path, POWERBI_CLOUD=cloud)
    del env["POWERBI_CLIENT_SECRET"]
    result = run(env, "--federated")
    assert result.returncode == 0, result.stderr
    (create,) = the(calls(env), "ad", "app", "federated-credential", "create")
    parameters = json.loads(options(create)["--parameters"][0])
    assert parameters["issuer"] == f"{issuer}{TENANT}/v2.0"
    assert parameters["audiences"] == [audience]


def test_federated_master_user_keeps_its_password_and_drops_the_client_secret(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env, "--federated")
    assert result.returncode == 0, result.stderr
    settings = app_settings(env)
    assert settings["POWERBI_PASSWORD"] == REFERENCE.format("powerbi-password")
    assert settings["POWERBI_CLIENT_ASSERTION"] == "managed_identity"
    assert "POWERBI_CLIENT_SECRET" not in settings
    assert [words(c) for c in calls(env) if words(c)[:2] == ("ad", "app")][-1][-1] == "create"


def test_federated_is_refused_in_managed_identity_mode(tmp_path: Path) -> None:
    env = base_env(tmp_path, POWERBI_AUTH_MODE="ManagedIdentity")
    result = run(env, "--federated")
    assert result.returncode == 1
    assert "--federated is for ServicePrincipal and MasterUser modes" in result.stderr
    assert calls(env) == []


def test_federated_with_redis_gives_the_trusted_identity_the_cache(tmp_path: Path) -> None:
    env = service_principal_env(tmp_path)
    del env["POWERBI_CLIENT_SECRET"]
    result = run(env, "--federated", "--redis")
    assert result.returncode == 0, result.stderr
    azure = state(env)
    (assignment,) = azure["redis"]["contoso-embed-redis"]["accessPolicyAssignments"]
    assert assignment["user"]["objectId"] == azure["identities"]["contoso-embed-signin"]["principalId"]


def test_an_assertion_set_by_hand_needs_no_client_secret(tmp_path: Path) -> None:
    identity = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
    env = service_principal_env(
        tmp_path, POWERBI_CLIENT_ASSERTION="managed_identity", POWERBI_MANAGED_IDENTITY_CLIENT_ID=identity
    )
    del env["POWERBI_CLIENT_SECRET"]
    result = run(env)  # unattended: a required secret would stop it
    assert result.returncode == 0, result.stderr
    settings = app_settings(env)
    assert (settings["POWERBI_CLIENT_ASSERTION"], settings["POWERBI_MANAGED_IDENTITY_CLIENT_ID"]) == (
        "managed_identity",
        identity,
    )
    assert "POWERBI_CLIENT_SECRET" not in settings


def test_an_existing_app_keeps_its_python_and_the_script_says_so(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run(env).returncode == 0
    again = run(env, "--python", "3.11")
    assert again.returncode == 0, again.stderr
    assert "function app contoso-embed runs Python 3.13: kept (--python 3.11 applies to a new app)" in again.stdout
    assert len(the(calls(env), "functionapp", "create")) == 1

"""deploy/deploy.sh --redis against the stand-in az: Azure Managed Redis with Entra ID, the app's access,
a generated encryption key in Key Vault, both settings as Key Vault references; without --redis, nothing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.test_deploy import (
    VAULT,
    base_env,
    calls,
    changes,
    options,
    position,
    run,
    settings_sent,
    state,
    the,
    words,
)

REDIS = "contoso-embed-redis"
HOST = f"{REDIS}.westeurope.redis.azure.net"
REFERENCE = "@Microsoft.KeyVault(SecretUri=https://contoso-embed-kv.vault.azure.net/secrets/{}/)"


def app_principal(env: dict[str, str]) -> str:
    principal: str = state(env)["apps"]["contoso-embed"]["identity"]["principalId"]
    return principal


def test_without_redis_nothing_of_it_is_touched_but_the_thread_count_is_set(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env)
    assert result.returncode == 0, result.stderr
    recorded = calls(env)
    assert not [c for c in recorded if words(c)[0] == "redisenterprise"]
    assert not [c for c in recorded if "powerbi-cache" in " ".join(c["argv"])]
    sent = settings_sent(recorded)
    assert not [name for name in sent if name.startswith("POWERBI_CACHE_")]
    assert sent["PYTHON_THREADPOOL_THREAD_COUNT"] == "32"


@dataclass(frozen=True)
class Runs:
    """Two runs with --redis against one fake subscription, and the az calls of each."""

    env: dict[str, str]
    first: list[dict[str, Any]]
    second: list[dict[str, Any]]

    @property
    def all(self) -> list[dict[str, Any]]:
        return self.first + self.second


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    env = base_env(tmp_path_factory.mktemp("deploy-redis"))
    first = run(env, "--redis")
    assert first.returncode == 0, first.stderr
    first_calls = calls(env)
    second = run(env, "--redis")
    assert second.returncode == 0, second.stderr
    assert "managed redis contoso-embed-redis: exists, reused" in second.stdout
    assert "secret POWERBI_CACHE_ENCRYPTION_KEY: exists in contoso-embed-kv, reused" in second.stdout
    return Runs(env, first_calls, calls(env)[len(first_calls) :])


def test_creates_a_managed_redis_with_entra_id_only(twice: Runs) -> None:
    (create,) = the(twice.first, "redisenterprise", "create")
    made = options(create)
    assert made["--name"] == [REDIS] and made["--resource-group"] == ["rg-embed"]
    assert made["--access-keys-auth"] == ["Disabled"]  # Entra ID only: no key to leak
    assert made["--client-protocol"] == ["Encrypted"] and made["--port"] == ["10000"]
    assert made["--minimum-tls-version"] == ["1.2"]
    assert made["--clustering-policy"] == ["EnterpriseCluster"]  # a plain (non-cluster) client works
    assert made["--sku"] == ["Balanced_B0"]


def test_the_app_identity_gets_an_access_policy_assignment_once(
    twice: Runs,
) -> None:
    env = twice.env
    (assignment,) = state(env)["redis"][REDIS]["accessPolicyAssignments"]
    assert assignment["user"]["objectId"] == app_principal(env)
    assert assignment["accessPolicyName"] == "default"
    # Looked for before it was made, and made after the cache and the app's identity.
    steps = [
        ("functionapp", "identity", "assign"),
        ("redisenterprise", "show"),
        ("redisenterprise", "create"),
        ("redisenterprise", "database", "access-policy-assignment", "list"),
        ("redisenterprise", "database", "access-policy-assignment", "create"),
        ("functionapp", "config", "appsettings", "set"),
    ]
    positions = [position(twice.first, *step) for step in steps]
    assert positions == sorted(positions)


def test_both_settings_are_key_vault_references_and_the_key_is_generated_once(
    twice: Runs,
) -> None:
    env = twice.env
    for calls_of_a_run in (twice.first, twice.second):
        sent = settings_sent(calls_of_a_run)
        assert sent["POWERBI_CACHE_URL"] == REFERENCE.format("powerbi-cache-url")
        assert sent["POWERBI_CACHE_ENCRYPTION_KEY"] == REFERENCE.format("powerbi-cache-encryption-key")
        assert sent["PYTHON_THREADPOOL_THREAD_COUNT"] == "32"
    secrets = state(env)["secrets"]
    assert {v["value"] for v in secrets[f"{VAULT}/powerbi-cache-url"]} == {f"rediss://{HOST}:10000"}
    (key,) = secrets[f"{VAULT}/powerbi-cache-encryption-key"]  # not made again on the second run
    assert len(base64.b64decode(key["value"], validate=True)) == 32
    assert key["mode"] == "0o600" and not Path(key["file"]).exists()
    for call in twice.all:
        assert key["value"] not in " ".join(call["argv"])
    # What the function makes of the deployed values: Entra ID sign-in (no password), the key accepted.
    settings = Settings.from_env(
        {
            "POWERBI_CLIENT_ID": env["POWERBI_CLIENT_ID"],
            "POWERBI_USERNAME": env["POWERBI_USERNAME"],
            "POWERBI_PASSWORD": "x",
            "POWERBI_WORKSPACE_ID": env["POWERBI_WORKSPACE_ID"],
            "POWERBI_CACHE_URL": f"rediss://{HOST}:10000",
            "POWERBI_CACHE_ENCRYPTION_KEY": key["value"],
        }
    )
    assert settings.shared_cache is not None and settings.shared_cache.uses_entra


def test_a_second_run_creates_nothing(twice: Runs) -> None:
    assert changes(twice.second) == []
    assert len(state(twice.env)["redis"]) == 1


def test_managed_identity_mode_gets_a_vault_for_the_cache_key(tmp_path: Path) -> None:
    env = base_env(tmp_path, POWERBI_AUTH_MODE="ManagedIdentity")
    for name in ("POWERBI_PASSWORD", "POWERBI_CLIENT_SECRET", "POWERBI_USERNAME", "POWERBI_CLIENT_ID"):
        env.pop(name)
    result = run(env, "--redis")
    assert result.returncode == 0, result.stderr
    recorded = calls(env)
    assert the(recorded, "keyvault", "create")
    assert set(state(env)["secrets"]) == {f"{VAULT}/powerbi-cache-url", f"{VAULT}/powerbi-cache-encryption-key"}
    granted = {
        (o["--role"][0], o["--assignee-object-id"][0])
        for o in map(options, the(recorded, "role", "assignment", "create"))
    }
    assert ("Key Vault Secrets User", app_principal(env)) in granted


def test_dry_run_shows_the_redis_plan(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env, "--dry-run", "--redis")
    assert result.returncode == 0, result.stderr
    assert "+ az redisenterprise create --name contoso-embed-redis" in result.stdout
    assert "+ az redisenterprise database access-policy-assignment create" in result.stdout
    assert "PYTHON_THREADPOOL_THREAD_COUNT=32" in result.stdout
    assert calls(env) == []

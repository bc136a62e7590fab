"""deploy/deploy.sh --customers against the stand-in az: the customers table in the app's storage account, the
app's identity reading it (and the deployer writing it), the settings with an identity-based connection, the
global scope removed; idempotent; without the flag, nothing of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fake_az.fake_az import DEPLOYER_USER_ID
from tests.test_deploy import base_env, calls, changes, options, position, run, state, the, words

ACCOUNT = "contosoembedst"
ENDPOINT = f"https://{ACCOUNT}.table.core.windows.net"
GLOBAL_SCOPE = ("POWERBI_WORKSPACE_ID", "POWERBI_ALLOWED_WORKSPACES", "POWERBI_PROFILE_ID")


def customers_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A service principal deployment for many customers: no global workspace or profile."""
    env = base_env(
        tmp_path,
        POWERBI_AUTH_MODE="ServicePrincipal",
        POWERBI_TENANT_ID="contoso.onmicrosoft.com",
        POWERBI_CUSTOMER_FROM="claim:tid",
        **extra,
    )
    for name in ("POWERBI_WORKSPACE_ID", "POWERBI_PROFILE_ID", "POWERBI_USERNAME", "POWERBI_PASSWORD"):
        env.pop(name, None)
    return env


def app_settings_call(recorded: list[dict[str, Any]]) -> dict[str, str]:
    """The settings the run sent, in its one call."""
    (call,) = the(recorded, "functionapp", "config", "appsettings", "set")
    return dict(pair.split("=", 1) for pair in options(call)["--settings"])


@dataclass(frozen=True)
class Runs:
    env: dict[str, str]
    first: list[dict[str, Any]]
    second: list[dict[str, Any]]
    second_stdout: str


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A single-workspace app deployed before, then moved to many customers, twice."""
    tmp = tmp_path_factory.mktemp("deploy-customers")
    before = customers_env(tmp) | {"POWERBI_WORKSPACE_ID": "f089354e-8366-4e18-aea3-4cb4a3a50b48"}
    del before["POWERBI_CUSTOMER_FROM"]
    assert run(before).returncode == 0
    assert state(before)["appsettings"]["contoso-embed"]["POWERBI_WORKSPACE_ID"]
    env = customers_env(tmp)
    already = len(calls(env))
    first = run(env, "--customers")
    assert first.returncode == 0, first.stderr
    first_calls = calls(env)[already:]
    second = run(env, "--customers")
    assert second.returncode == 0, second.stderr
    return Runs(env, first_calls, calls(env)[already + len(first_calls) :], second.stdout)


def table_id(env: dict[str, str], table: str = "customers") -> str:
    account: str = state(env)["storage"][ACCOUNT]["id"]
    return f"{account}/tableServices/default/tables/{table}"


def test_creates_the_table_in_the_apps_storage_account_through_resource_manager(twice: Runs) -> None:
    (create,) = the(twice.first, "resource", "create")
    assert options(create)["--id"] == [table_id(twice.env)]
    assert state(twice.env)["resources"][table_id(twice.env).lower()]["name"] == "customers"
    # Looked for first; made before the code that reads it is deployed.
    steps = [("resource", "show"), ("resource", "create"), ("functionapp", "deployment", "source", "config-zip")]
    positions = [position(twice.first, *step) for step in steps]
    assert positions == sorted(positions)


def test_the_app_reads_the_table_and_the_deployer_writes_it(twice: Runs) -> None:
    app = state(twice.env)["apps"]["contoso-embed"]["identity"]["principalId"]
    on_table = {
        (a["roleDefinitionName"], a["principalId"], a["principalType"])
        for a in state(twice.env)["roles"]
        if a["scope"] == table_id(twice.env)
    }
    assert on_table == {
        ("Storage Table Data Reader", app, "ServicePrincipal"),
        ("Storage Table Data Contributor", DEPLOYER_USER_ID, "User"),
    }


def test_sets_the_three_settings_with_an_identity_based_connection(twice: Runs) -> None:
    sent = app_settings_call(twice.first)
    assert (sent["POWERBI_CUSTOMERS_SOURCE"], sent["POWERBI_CUSTOMERS_TABLE"]) == ("table", "customers")
    assert sent["POWERBI_CUSTOMERS_CONNECTION"] == "CustomersStorage"
    assert sent["POWERBI_CUSTOMER_FROM"] == "claim:tid"
    assert sent["CustomersStorage__tableServiceUri"] == ENDPOINT
    settings = state(twice.env)["appsettings"]["contoso-embed"]
    assert settings["CustomersStorage__tableServiceUri"] == ENDPOINT
    assert "CustomersStorage" not in settings  # no connection string, no account key
    assert not set(GLOBAL_SCOPE) & set(settings)  # removed: each customer brings its own
    assert all("AccountKey" not in " ".join(c["argv"]) for c in twice.first + twice.second)


def test_a_second_run_creates_and_grants_nothing(twice: Runs) -> None:
    assert changes(twice.second) == []
    assert f"table customers in {ACCOUNT}: exists, reused" in twice.second_stdout
    assert "the function app has 'Storage Table Data Reader' on the table: yes" in twice.second_stdout
    assert len([a for a in state(twice.env)["roles"] if a["scope"] == table_id(twice.env)]) == 2


def test_a_table_name_of_ones_own(tmp_path: Path) -> None:
    env = customers_env(tmp_path, POWERBI_CUSTOMERS_TABLE="Tenants2")
    result = run(env, "--customers")
    assert result.returncode == 0, result.stderr
    assert options(the(calls(env), "resource", "create")[0])["--id"] == [table_id(env, "Tenants2")]
    assert app_settings_call(calls(env))["POWERBI_CUSTOMERS_TABLE"] == "Tenants2"


@pytest.mark.parametrize(
    ("extra", "drop", "complaint"),
    [
        ({}, "POWERBI_CUSTOMER_FROM", "--customers needs POWERBI_CUSTOMER_FROM"),
        ({"POWERBI_WORKSPACE_ID": "f089354e-8366-4e18-aea3-4cb4a3a50b48"}, "", "unset POWERBI_WORKSPACE_ID"),
        ({"POWERBI_CUSTOMERS_TABLE": "no-dashes"}, "", "POWERBI_CUSTOMERS_TABLE must be a table name"),
    ],
)
def test_inputs_are_checked_before_any_az_call(
    tmp_path: Path, extra: dict[str, str], drop: str, complaint: str
) -> None:
    env = customers_env(tmp_path) | extra
    env.pop(drop, None)
    result = run(env, "--customers")
    assert result.returncode == 1 and complaint in result.stderr
    assert calls(env) == []


def test_without_the_flag_no_table_role_or_customers_setting(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run(env).returncode == 0
    recorded = calls(env)
    assert not [c for c in recorded if words(c)[0] == "resource"]
    assert not [name for name in state(env)["appsettings"]["contoso-embed"] if "CUSTOMER" in name.upper()]


def test_a_dry_run_shows_the_table_steps(tmp_path: Path) -> None:
    env = customers_env(tmp_path)
    result = run(env, "--customers", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ az resource create --id \\<storage-account-id\\>/tableServices/default/tables/customers" in result.stdout
    assert "Storage\\ Table\\ Data\\ Reader" in result.stdout
    assert calls(env) == []

"""The doctor against the emulator: what it prints for success and for each failure it recognises."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from emulator import (
    CLIENT_ID,
    DASHBOARD_ID,
    REPORT_ID,
    RLS_REPORT_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator.entra import emulator_session
from shared import doctor
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.conftest import PASSWORD, SECRET


def run(env: dict[str, str], *argv: str, authority: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    authority = authority or env.get("POWERBI_AUTHORITY_HOST")
    if not authority and "--settings" in argv:
        authority = json.loads(Path(argv[argv.index("--settings") + 1]).read_text())["Values"].get(
            "POWERBI_AUTHORITY_HOST"
        )
    session = emulator_session(authority) if authority else None  # MSAL's user realm URL has no port
    status = doctor.main(list(argv), env, out, session)
    return status, out.getvalue()


def test_a_working_setup(fake: FakeUpstream, env: dict[str, str]) -> None:
    status, text = run(env)

    assert status == 0
    assert "ok    signed in as master user embed.user@contoso.com" in text
    assert f"ok    workspace Sales ({WORKSPACE_ID}): role Admin" in text
    assert f"ok    report {REPORT_ID}: https://app.powerbi.com/reportEmbed?" in text
    assert f"ok    dashboard {DASHBOARD_ID}: https://app.powerbi.com/dashboardEmbed?" in text
    assert "ok    test GenerateToken for report" in text
    assert "not on a capacity" in text  # the emulator's Sales workspace is on shared capacity
    assert "Result: OK" in text
    assert SECRET not in text and PASSWORD not in text
    assert "POWERBI_PASSWORD = (set)" in text
    assert len(fake.calls("POST", "GenerateToken")) == 1


def test_settings_from_local_settings_json(fake: FakeUpstream, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": env}))

    status, text = run({}, "--settings", str(path), authority=fake.base_url)

    assert status == 0
    assert f"Settings (from the environment, then {path})" in text


def test_list(fake: FakeUpstream, env: dict[str, str]) -> None:
    del env["POWERBI_WORKSPACE_ID"]  # what --list helps to find

    status, text = run(env, "--list")

    assert status == 0
    assert f"workspace  Sales  {WORKSPACE_ID}" in text
    assert f"report     Sales Overview  {REPORT_ID}" in text
    assert f"dashboard  Sales Dashboard  {DASHBOARD_ID}" in text
    assert not fake.calls("POST", "GenerateToken")


def test_settings_problems_and_key_vault_references(fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_PASSWORD"] = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/pw/)"
    env["POWERBI_WORKSPACE_ID"] = "Sales"

    status, text = run(env)

    assert status == 1
    assert "FAIL  POWERBI_PASSWORD: an unresolved Key Vault reference" in text
    assert "Key Vault Secrets User" in text
    assert "FAIL  POWERBI_WORKSPACE_ID must be a GUID" in text
    assert fake.requests == []


def test_each_settings_problem_is_one_line(fake: FakeUpstream, env: dict[str, str]) -> None:
    """The problems come from the error's list, whole: the Key Vault one holds both ": " and "; "."""
    env["POWERBI_PASSWORD"] = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/pw/)"
    env["POWERBI_TOKEN_LIFETIME_MINUTES"] = "600"
    env["POWERBI_WORKSPACE_ID"] = "Sales"

    status, text = run(env)

    failures = [line.strip().removeprefix("FAIL  ") for line in text.splitlines() if "FAIL  " in line]
    with pytest.raises(ConfigurationError) as raised:  # what the function itself finds in the same values
        Settings.from_env(env)
    assert status == 1
    assert len(raised.value.problems) == 3
    assert [f for f in failures if ": an unresolved" not in f] == list(raised.value.problems)
    assert not any(f.startswith(("check that", "locally", "sign in")) for f in failures)


@pytest.mark.parametrize(
    ("aadsts", "words"),
    [
        (50034, "the user account does not exist in this tenant"),
        (50076, "must use multi-factor authentication"),
        (50079, "must register for multi-factor authentication"),
        (50126, "wrong username or password"),
        (53003, "Conditional Access"),
        (65001, "grant admin consent"),
        (700016, "no app with this client id in this tenant"),
        (7000215, "the client secret is wrong"),
        (7000222, "the client secret has expired"),
    ],
)
def test_sign_in_failures_are_explained(fake: FakeUpstream, env: dict[str, str], aadsts: int, words: str) -> None:
    fake.sign_in_failures[USERNAME] = aadsts

    status, text = run(env)

    assert status == 1
    assert f"FAIL  Entra ID refused the sign-in (AADSTS{aadsts}): " in text
    assert words in text
    assert not fake.calls(path_contains="/v1.0/")


def test_unknown_tenant(fake: FakeUpstream, env: dict[str, str]) -> None:
    fake.known_tenants = {"contoso.onmicrosoft.com"}
    env["POWERBI_TENANT_ID"] = "contso.onmicrosoft.com"

    status, text = run(env)

    assert status == 1
    assert "AADSTS90002): the tenant was not found: check POWERBI_TENANT_ID" in text


def test_not_a_member_of_the_workspace(fake: FakeUpstream, env: dict[str, str]) -> None:
    fake.set_member(WORKSPACE_ID, USERNAME, None)

    status, text = run(env)

    assert status == 1
    assert f"FAIL  workspace {WORKSPACE_ID} is not among them" in text
    assert "fix: add the master user embed.user@contoso.com to the workspace as Member or Admin" in text


def test_trial_tokens_used_up(fake: FakeUpstream, env: dict[str, str]) -> None:
    fake.trial_tokens_left = 0

    status, text = run(env)

    assert status == 1
    assert "FAIL  test GenerateToken for report" in text
    assert "fix: the trial embed tokens are used up: assign the workspace to a capacity" in text


def test_service_principals_not_allowed_by_the_tenant(fake: FakeUpstream, env: dict[str, str]) -> None:
    fake.service_principals_allowed = False
    env.update({"POWERBI_AUTH_MODE": "ServicePrincipal"})

    status, text = run(env)

    assert status == 1
    assert f"ok    signed in as service principal {CLIENT_ID}" in text
    assert "FAIL  the workspaces could not be listed" in text
    assert "'Service principals can use Fabric APIs'" in text


def test_a_dataset_that_requires_an_identity(fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_ALLOWED_REPORTS"] = RLS_REPORT_ID

    status, text = run(env)

    assert status == 1
    assert f"FAIL  test GenerateToken for report {RLS_REPORT_ID}" in text
    assert "POWERBI_RLS_USERNAME_SOURCE=principal" in text
    assert not fake.calls("POST", "GenerateToken")


def test_the_environment_wins_over_local_settings_json_and_each_value_says_where_it_came_from(
    fake: FakeUpstream, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "local.settings.json"
    in_file = {**env, "POWERBI_WORKSPACE_ID": "not-a-guid", "POWERBI_MIN_TOKEN_MINUTES": "12"}
    path.write_text(json.dumps({"IsEncrypted": False, "Values": in_file}))
    environment = {"POWERBI_WORKSPACE_ID": WORKSPACE_ID, "POWERBI_ALLOW_EDIT": "false"}

    status, text = run(environment, "--settings", str(path), authority=env["POWERBI_AUTHORITY_HOST"])

    assert status == 0  # the file's bad workspace id is not what the function would run with
    assert f"Settings (from the environment, then {path})" in text
    assert f"POWERBI_WORKSPACE_ID = {WORKSPACE_ID}  (from the environment, over {path})" in text
    assert f"POWERBI_MIN_TOKEN_MINUTES = 12  (from {path})" in text
    assert "POWERBI_ALLOW_EDIT = false  (from the environment)" in text
    assert f"POWERBI_PASSWORD = (set)  (from {path})" in text
    assert "not-a-guid" not in text


def test_an_empty_environment_variable_does_not_hide_the_files_value(
    fake: FakeUpstream, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": env}))

    status, text = run({"POWERBI_WORKSPACE_ID": ""}, "--settings", str(path), authority=env["POWERBI_AUTHORITY_HOST"])

    assert status == 0
    assert f"POWERBI_WORKSPACE_ID = {WORKSPACE_ID}  (from {path})" in text


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"POWERBI_MIN_TOKEN_MINUTES": "60"}, "POWERBI_MIN_TOKEN_MINUTES must be a whole number from 0 to 30"),
        ({"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_TENANT_ID": "common"}, "POWERBI_TENANT_ID must name"),
    ],
)
def test_settings_that_cannot_work_fail_in_the_doctor(
    fake: FakeUpstream, env: dict[str, str], values: dict[str, str], named: str
) -> None:
    status, text = run({**env, **values})

    assert status == 1
    assert f"FAIL  {named}" in text
    assert fake.requests == []


def test_a_key_vault_reference_the_sign_in_mode_does_not_use_is_a_warning(
    fake: FakeUpstream, env: dict[str, str]
) -> None:
    # A service principal never reads the master user's password: the function works, the doctor warns.
    env.update(
        {
            "POWERBI_AUTH_MODE": "ServicePrincipal",
            "POWERBI_PASSWORD": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/pw/)",
        }
    )

    status, text = run(env)

    assert status == 0
    assert "warn  POWERBI_PASSWORD: an unresolved Key Vault reference" in text
    assert "FAIL" not in text

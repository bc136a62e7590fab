"""``python -m shared.customers`` end to end against the emulator: add (idempotent, resumable), list, check,
remove; in-process through ``main(argv, env, out)`` and once as a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

from emulator import CAPACITY_ID, CLIENT_ID, MANAGED_IDENTITY_CLIENT_ID, TENANT_ID, USERNAME, WORKSPACE_ID, FakeUpstream
from emulator import catalog as cat
from shared.customers.__main__ import main
from shared.customers.directory import Customer
from tests.azurite import ACCOUNT_KEY, AzuriteTables
from tests.conftest import PASSWORD, SECRET, FakeClock
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PROFILE_HEADER = "x-powerbi-profile-id"


@pytest.fixture(autouse=True)
def strict_profiles(fake: FakeUpstream) -> None:
    """As Power BI: a profile the emulator does not know is refused."""
    fake.strict_profiles = True


def service_principal(fake: FakeUpstream, **more: str) -> dict[str, str]:
    return {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": SECRET,
        "POWERBI_AUTHORITY_HOST": fake.base_url,
        "POWERBI_API_URL": fake.base_url,
    } | more


def settings_file(tmp_path: Path, values: dict[str, str]) -> Path:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
    return path


def pbix(tmp_path: Path, name: str = "Sales.pbix") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("Version", "1.28")
    return path


def run(values: dict[str, str], tmp_path: Path, *argv: str, clock: FakeClock | None = None) -> tuple[int, str]:
    out = io.StringIO()
    path = settings_file(tmp_path, values)
    status = main(["--settings", str(path), *argv], {}, out, clock=clock or FakeClock())
    return status, out.getvalue()


def printed_customer(text: str) -> dict[str, Any]:
    """The JSON object the command prints for POWERBI_CUSTOMERS."""
    line = next(line for line in text.splitlines() if line.startswith("{"))
    return dict(json.loads(line))


def pbi_calls(fake: FakeUpstream, method: str | None = None) -> list[Any]:
    return [r for r in fake.calls(method) if r.path.startswith("/v1.0/")]


def test_add_onboards_a_customer_in_one_step_and_a_second_run_changes_nothing(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    env, file = service_principal(fake), pbix(tmp_path)
    args = ("add", "Contoso", "--name", "Contoso Ltd", "--capacity", CAPACITY_ID, "--import", str(file))
    status, text = run(env, tmp_path, *args)
    assert status == 0, text

    [profile] = fake.profiles.values()
    assert (profile["displayName"], profile["owner"]) == ("Contoso Ltd", CLIENT_ID)
    workspace = next(ws for ws in fake.catalog["workspaces"] if ws["name"] == "Contoso Ltd")
    assert workspace["members"] == {profile["id"]: "Admin"}  # the profile owns it, not the app
    assert (workspace["isOnDedicatedCapacity"], workspace["capacityId"]) == (True, CAPACITY_ID)
    [report] = workspace["reports"]
    assert report["name"] == "Sales" and cat.find(fake.catalog, "datasets", report["datasetId"]) is not None
    assert printed_customer(text) == {
        "id": "contoso",
        "profileId": profile["id"],
        "workspaces": [workspace["id"]],
        "displayName": "Contoso Ltd",
    }
    assert "add this object to the array of POWERBI_CUSTOMERS" in text and "POWERBI_CUSTOMERS_SOURCE=setting" in text
    # Every call about the workspace was made as the profile; the profile calls as the app.
    for call in pbi_calls(fake):
        acting = call.headers.get(PROFILE_HEADER)
        assert acting == (None if call.path.endswith("/profiles") else profile["id"]), call.path

    # The customer is in POWERBI_CUSTOMERS now: the same command again finds everything and creates nothing.
    fake.reset_records()
    env |= {
        "POWERBI_CUSTOMERS_SOURCE": "setting",
        "POWERBI_CUSTOMER_FROM": "claim:tid",
        "POWERBI_CUSTOMERS": json.dumps([printed_customer(text)]),
    }
    status, again = run(env, tmp_path, *args)
    assert status == 0 and "Customer Contoso is already onboarded: nothing changed." in again, again
    assert [c.method for c in pbi_calls(fake)] == ["GET"] * 3  # profiles, the workspace, its reports
    assert len(fake.profiles) == 1 and len(fake.imports) == 1


def test_waiting_for_the_import_polls_on_the_injected_clock(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.import_publishing_polls = 3
    clock = FakeClock()
    status, text = run(
        service_principal(fake), tmp_path, "add", "c1", "--name", "C1", "--import", str(pbix(tmp_path)), clock=clock
    )
    assert status == 0, text
    assert clock.sleeps == [5.0, 5.0, 5.0]
    assert len(fake.calls("GET", "/imports/")) == 4 and "imported Sales.pbix" in text


def test_a_failed_import_says_what_was_done_and_a_rerun_finishes(fake: FakeUpstream, tmp_path: Path) -> None:
    env, file = service_principal(fake), pbix(tmp_path)
    fake.import_outcome, fake.import_publishing_polls = "Failed", 0
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1", "--import", str(file))
    assert status == 1
    assert "Power BI could not import Sales.pbix" in text and "import state Failed" in text
    assert "Done before the failure: created profile C1" in text and "created workspace C1" in text
    assert "Run the same command again to finish" in text and "{" not in text  # no entry printed

    fake.import_outcome = "Succeeded"
    fake.reset_records()
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1", "--import", str(file))
    assert status == 0, text
    assert "ok    profile C1" in text and "ok    workspace C1" in text and "done  imported Sales.pbix" in text
    assert not fake.calls("POST", "/profiles") and not fake.calls("POST", "/groups?")  # nothing made twice
    assert len(fake.profiles) == 1 and sum(ws["name"] == "C1" for ws in fake.catalog["workspaces"]) == 1


def test_a_failure_midway_is_not_retried_blindly_and_rerunning_finishes(fake: FakeUpstream, tmp_path: Path) -> None:
    env = service_principal(fake)
    fake.fault("POST", "/AssignToCapacity", status=500)
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1", "--capacity", CAPACITY_ID)
    assert status == 1
    assert "Power BI refused to assign workspace" in text and "HTTP 500" in text
    assert "Done before the failure: created profile C1" in text
    assert len(fake.calls("POST", "/AssignToCapacity")) == 1  # a create is never repeated by the retry policy
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1", "--capacity", CAPACITY_ID)
    assert status == 0 and f"done  assigned workspace C1 to capacity {CAPACITY_ID}" in text, text
    assert len(fake.profiles) == 1


def test_a_name_taken_in_the_tenant_is_explained(fake: FakeUpstream, tmp_path: Path) -> None:
    status, text = run(service_principal(fake), tmp_path, "add", "c1", "--name", "Sales")
    assert status == 1 and "HTTP 409" in text and "choose another --name" in text


def test_it_runs_only_as_a_service_principal_or_managed_identity(fake: FakeUpstream, tmp_path: Path) -> None:
    master_user = service_principal(fake, POWERBI_AUTH_MODE="MasterUser", POWERBI_USERNAME=USERNAME)
    master_user["POWERBI_PASSWORD"] = PASSWORD
    status, text = run(master_user, tmp_path, "add", "c1", "--name", "C1")
    assert status == 2 and "ServicePrincipal or ManagedIdentity, not MasterUser" in text
    assert not fake.requests

    status, text = run(service_principal(fake, POWERBI_CLIENT_SECRET=""), tmp_path, "list")
    assert status == 2 and "POWERBI_CLIENT_SECRET" in text and "The settings are not usable" in text


def test_arguments_are_checked_before_any_call(fake: FakeUpstream, tmp_path: Path) -> None:
    env = service_principal(fake)
    for args, complaint in [
        (("add", "a/b", "--name", "X"), "must be at most 256 characters without /"),
        (("add", "c1", "--name", "X", "--capacity", "premium"), "--capacity must be a capacity id"),
        (("add", "c1", "--name", "X", "--import", str(tmp_path / "missing.pbix")), "--import must name"),
    ]:
        status, text = run(env, tmp_path, *args)
        assert (status, complaint in text) == (2, True), text
    assert not pbi_calls(fake)


def test_managed_identity_owns_its_profiles(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    env = {"POWERBI_AUTH_MODE": "ManagedIdentity", "POWERBI_API_URL": fake.base_url}
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1")
    assert status == 0, text
    [profile] = fake.profiles.values()
    assert profile["owner"] == MANAGED_IDENTITY_CLIENT_ID


def directory(*customers: dict[str, Any]) -> dict[str, str]:
    return {
        "POWERBI_CUSTOMERS_SOURCE": "setting",
        "POWERBI_CUSTOMER_FROM": "claim:tid",
        "POWERBI_CUSTOMERS": json.dumps(list(customers)),
    }


def onboarded(fake: FakeUpstream, tmp_path: Path, customer_id: str, name: str) -> dict[str, Any]:
    status, text = run(service_principal(fake), tmp_path, "add", customer_id, "--name", name)
    assert status == 0, text
    return printed_customer(text)


def test_list_and_check_each_profile_sees_its_workspaces(fake: FakeUpstream, tmp_path: Path) -> None:
    contoso, fabrikam = onboarded(fake, tmp_path, "contoso", "Contoso"), onboarded(fake, tmp_path, "fabrikam", "Fab")
    app_only = {"id": "legacy", "workspaces": [WORKSPACE_ID]}  # no profile: the app itself
    env = service_principal(fake) | directory(contoso, fabrikam, app_only)

    status, text = run(env, tmp_path, "list")
    assert status == 0 and "3 customer(s) in the POWERBI_CUSTOMERS" in text
    assert f"contoso  Contoso  profile {contoso['profileId']}  workspaces {contoso['workspaces'][0]}" in text
    assert "legacy  -  no profile (the app itself)" in text

    fake.reset_records()
    status, text = run(env, tmp_path, "check")
    assert status == 0, text
    assert text.count("  ok    customer") == 3
    groups = [c for c in pbi_calls(fake) if c.path.endswith("/groups")]
    assert len(groups) == 3  # one Power BI call per workspace
    assert {c.headers.get(PROFILE_HEADER) for c in groups} == {contoso["profileId"], fabrikam["profileId"], None}

    # An entry naming another customer's workspace: its profile cannot see it.
    crossed = fabrikam | {"id": "crossed", "workspaces": contoso["workspaces"]}
    env = service_principal(fake) | directory(crossed)
    status, text = run(env, tmp_path, "check", "crossed")
    assert status == 1 and "not visible" in text and "fix: add the profile" in text
    status, text = run(env, tmp_path, "check", "nobody")
    assert status == 1 and "customer nobody is not in the POWERBI_CUSTOMERS" in text


def test_check_explains_a_deleted_profile(fake: FakeUpstream, tmp_path: Path) -> None:
    contoso = onboarded(fake, tmp_path, "contoso", "Contoso")
    del fake.profiles[contoso["profileId"]]
    status, text = run(service_principal(fake) | directory(contoso), tmp_path, "check", "Contoso")
    assert status == 1 and "HTTP 401 PowerBINotAuthorizedException" in text
    assert "Allow service principals to create and use profiles" in text


def test_remove_deletes_the_workspace_and_the_profile_when_asked(fake: FakeUpstream, tmp_path: Path) -> None:
    contoso = onboarded(fake, tmp_path, "contoso", "Contoso")
    env = service_principal(fake) | directory(contoso)
    status, text = run(env, tmp_path, "remove", "contoso")
    assert status == 0 and "remove the object with id 'contoso' from POWERBI_CUSTOMERS" in text
    assert contoso["profileId"] in fake.profiles  # kept without --delete-workspace

    status, text = run(env, tmp_path, "remove", "contoso", "--delete-workspace")
    assert status == 0, text
    assert f"deleted workspace {contoso['workspaces'][0]}" in text and f"deleted profile {contoso['profileId']}" in text
    assert fake.profiles == {} and cat.workspace(fake.catalog, contoso["workspaces"][0]) is None
    status, text = run(env, tmp_path, "remove", "contoso", "--delete-workspace")
    assert status == 0 and "was already deleted" in text
    status, text = run(service_principal(fake) | directory(contoso), tmp_path, "remove", "other")
    assert status == 0 and "nothing to remove" in text


def test_nothing_printed_carries_a_secret_or_a_token(fake: FakeUpstream, tmp_path: Path) -> None:
    texts = [run(service_principal(fake), tmp_path, "add", "c1", "--name", "C1")[1]]
    fake.fault("POST", "/groups", status=401)
    texts.append(run(service_principal(fake), tmp_path, "add", "c2", "--name", "C2")[1])
    everything = "\n".join(texts)
    assert SECRET not in everything
    assert not any(token in everything for token in fake.access_tokens)


def test_as_a_subprocess(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.import_publishing_polls = 0
    path = settings_file(tmp_path, service_principal(fake))
    argv = ["--settings", str(path), "add", "c1", "--name", "C1", "--import", str(pbix(tmp_path))]
    done = subprocess.run(  # noqa: S603 - our own arguments
        [sys.executable, "-m", "shared.customers", *argv],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert printed_customer(done.stdout)["id"] == "c1" and SECRET not in done.stdout + done.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "shared.customers", "add"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr


# --- the table source, against a real Azurite ------------------------------------------------------------


def table_settings(fake: FakeUpstream, azurite: AzuriteTables, table: str) -> dict[str, str]:
    return service_principal(fake) | {
        "POWERBI_CUSTOMERS_SOURCE": "table",
        "POWERBI_CUSTOMER_FROM": "claim:tid",
        "POWERBI_CUSTOMERS_TABLE": table,
        "POWERBI_CUSTOMERS_CONNECTION": "CustomersStorage",
        "CustomersStorage": azurite.connection_string,
    }


def test_the_table_source_is_written_listed_checked_and_emptied(
    fake: FakeUpstream, azurite: AzuriteTables, tmp_path: Path
) -> None:
    table = f"t{uuid.uuid4().hex[:12]}"
    env = table_settings(fake, azurite, table)
    status, text = run(env, tmp_path, "add", "Contoso", "--name", "Contoso", "--capacity", CAPACITY_ID)
    assert status == 0 and f"done  added customer contoso in the table {table}" in text, text
    [profile] = fake.profiles.values()
    client = TableClient.from_connection_string(azurite.connection_string, table)
    entity = client.get_entity("customer", "contoso")
    workspace = next(ws for ws in fake.catalog["workspaces"] if ws["name"] == "Contoso")
    assert (entity["ProfileId"], entity["Workspaces"], entity["DisplayName"]) == (
        profile["id"],
        workspace["id"],
        "Contoso",
    )
    assert Customer.from_entity(entity).profile_id == profile["id"]

    status, again = run(env, tmp_path, "add", "Contoso", "--name", "Contoso", "--capacity", CAPACITY_ID)
    assert status == 0 and "nothing changed" in again and f"ok    customer contoso is in the table {table}" in again

    # An entry someone added by hand keeps its allow-list when the command runs again.
    report = str(uuid.uuid4())
    client.upsert_entity(entity | {"Reports": report})
    status, text = run(env, tmp_path, "add", "Contoso", "--name", "Contoso")
    assert status == 0 and "nothing changed" in text
    assert client.get_entity("customer", "contoso")["Reports"] == report

    client.upsert_entity({"PartitionKey": "customer", "RowKey": "broken", "Workspaces": "not-a-guid"})
    status, text = run(env, tmp_path, "list")
    assert status == 1 and f"2 customer(s) in the table {table}" in text and "INVALID broken" in text
    status, text = run(env, tmp_path, "check", "contoso")
    assert status == 0 and "visible (Contoso)" in text
    client.delete_entity("customer", "broken")

    status, text = run(env, tmp_path, "remove", "contoso", "--delete-workspace")
    assert status == 0 and f"removed customer contoso from the table {table}" in text, text
    assert list(client.list_entities()) == [] and fake.profiles == {}


def test_an_unreachable_table_is_a_failure_that_names_no_key(
    fake: FakeUpstream, azurite: AzuriteTables, tmp_path: Path
) -> None:
    env = table_settings(fake, azurite, "customers")
    env["CustomersStorage"] = azurite.connection_string.replace(str(azurite.port), str(free_port()))
    status, text = run(env, tmp_path, "add", "c1", "--name", "C1")
    assert status == 1 and "The customers table customers could not be read" in text
    assert ACCOUNT_KEY not in text and not pbi_calls(fake)

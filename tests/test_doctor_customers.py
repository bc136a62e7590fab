"""The doctor with a customer directory: each customer's profile sees each of its workspaces (up to 50
customers, one Power BI call per workspace), and a customer with a profile under MasterUser is a FAIL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

from emulator import CLIENT_ID, TENANT_ID, USERNAME, WORKSPACE_ID, FakeUpstream
from shared.customers.directory import Customer
from tests.azurite import AzuriteTables
from tests.conftest import PASSWORD, SECRET
from tests.test_doctor import run

PROFILE_HEADER = "x-powerbi-profile-id"


@pytest.fixture(autouse=True)
def strict_profiles(fake: FakeUpstream) -> None:
    """As Power BI: a profile the emulator does not know is refused."""
    fake.strict_profiles = True


def customer(fake: FakeUpstream, name: str, *, profile: bool = True) -> dict[str, Any]:
    """A customer whose workspace its own profile (or, without one, the app) administers."""
    profile_id = fake.add_profile(name) if profile else None
    workspace = str(uuid.uuid4())
    fake.catalog["workspaces"].append({"id": workspace, "name": name, "members": {profile_id or CLIENT_ID: "Admin"}})
    return {"id": name.lower(), "workspaces": [workspace]} | ({"profileId": profile_id} if profile_id else {})


def settings(fake: FakeUpstream, *customers: dict[str, Any], **more: str) -> dict[str, str]:
    return {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": SECRET,
        "POWERBI_AUTHORITY_HOST": fake.base_url,
        "POWERBI_API_URL": fake.base_url,
        "POWERBI_CUSTOMERS_SOURCE": "setting",
        "POWERBI_CUSTOMER_FROM": "claim:tid",
        "POWERBI_CUSTOMERS": json.dumps(list(customers)),
        "WEBSITE_AUTH_ENABLED": "True",
    } | more


def group_reads(fake: FakeUpstream) -> list[Any]:
    return [c for c in fake.calls("GET") if c.path == "/v1.0/myorg/groups"]


def test_each_customers_profile_sees_its_workspaces(fake: FakeUpstream) -> None:
    contoso, fabrikam = customer(fake, "Contoso"), customer(fake, "Fabrikam")
    legacy = customer(fake, "Legacy", profile=False)
    status, text = run(settings(fake, contoso, fabrikam, legacy))
    assert status == 0, text
    assert "Customers (POWERBI_CUSTOMERS, up to 50)" in text
    assert f"ok    customer contoso: workspace {contoso['workspaces'][0]} as profile {contoso['profileId']}" in text
    assert "customer legacy: workspace" in text and "as the app itself (no profile): visible (Legacy)" in text
    assert "Result: OK" in text and SECRET not in text
    reads = group_reads(fake)
    assert len(reads) == 3  # one call per workspace
    assert [r.headers.get(PROFILE_HEADER) for r in reads] == [contoso["profileId"], fabrikam["profileId"], None]
    assert not fake.calls("POST", "GenerateToken")


def test_a_workspace_the_profile_cannot_see_fails(fake: FakeUpstream) -> None:
    contoso, fabrikam = customer(fake, "Contoso"), customer(fake, "Fabrikam")
    crossed = fabrikam | {"workspaces": contoso["workspaces"]}  # Fabrikam's profile pointed at Contoso's workspace
    status, text = run(settings(fake, crossed))
    assert status == 1
    assert f"FAIL  customer fabrikam: workspace {contoso['workspaces'][0]} as profile" in text
    assert "not visible" in text and "Result: not working yet" in text


def test_a_profile_under_master_user_fails_for_that_customer(fake: FakeUpstream) -> None:
    contoso = customer(fake, "Contoso")
    shared = {"id": "shared", "workspaces": [WORKSPACE_ID]}  # no profile: the master user's own workspace
    master_user = settings(fake, contoso, shared, POWERBI_AUTH_MODE="MasterUser", POWERBI_USERNAME=USERNAME)
    master_user["POWERBI_PASSWORD"] = PASSWORD
    status, text = run(master_user)
    assert status == 1
    assert f"FAIL  customer contoso has a profile ({contoso['profileId']}), but the function signs in as a master" in (
        text
    )
    assert "fix: sign in as a service principal or managed identity" in text
    assert f"ok    customer shared: workspace {WORKSPACE_ID} as the app itself (no profile): visible (Sales)" in text
    assert [r.headers.get(PROFILE_HEADER) for r in group_reads(fake)] == [None]  # never a profile for a user
    assert PASSWORD not in text


def test_at_most_50_customers_are_checked(fake: FakeUpstream) -> None:
    many = [customer(fake, f"C{i}") for i in range(51)]
    status, text = run(settings(fake, *many))
    assert status == 0, text
    assert len(group_reads(fake)) == 50
    assert "only the first 50 customers were checked" in text and "python -m shared.customers check" in text


def test_the_table_directory(fake: FakeUpstream, azurite: AzuriteTables, tmp_path: Path) -> None:
    table = f"t{uuid.uuid4().hex[:12]}"
    client = TableClient.from_connection_string(azurite.connection_string, table)
    client.create_table()
    contoso = customer(fake, "Contoso")
    client.upsert_entity(Customer.from_json(contoso).to_entity())
    env = settings(fake, POWERBI_CUSTOMERS_SOURCE="table", POWERBI_CUSTOMERS_TABLE=table)
    del env["POWERBI_CUSTOMERS"]
    env |= {"POWERBI_CUSTOMERS_CONNECTION": "CustomersStorage", "CustomersStorage": azurite.connection_string}
    status, text = run(env)
    assert status == 0, text
    assert f"Customers (table {table}, up to 50)" in text and "customer contoso: workspace" in text
    client.delete_table()

"""Many customers (issue 16): each signed-in user's customer decides the workspaces, items and profile.

Against the emulator (it records every request) and, for the table source, a real Azurite.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

import function_app
from emulator import (
    OTHER_REPORT_ID,
    OTHER_WORKSPACE_ID,
    REPORT_ID,
    RLS_DATASET_ID,
    RLS_REPORT_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator.host import FunctionRoutes
from shared.customers.directory import Customer, table_client
from shared.customers.table import MAX_CUSTOMERS, RETRY_AFTER_SECONDS, TableDirectory
from shared.embed import EmbedService
from shared.errors import ConfigurationError
from shared.redact import redact
from shared.settings import Settings
from tests.azurite import AzuriteTables, CountingTable
from tests.conftest import PASSWORD, FakeClock

PROFILE_A = "a0a0a0a0-1111-4111-8111-000000000001"
PROFILE_B = "b0b0b0b0-2222-4222-8222-000000000002"
PROFILE_C = "c0c0c0c0-3333-4333-8333-000000000003"
CUSTOMER_A = {"id": "Contoso", "profileId": PROFILE_A, "workspaces": [WORKSPACE_ID], "displayName": "Contoso"}
CUSTOMER_B = {"id": "fabrikam", "profileId": PROFILE_B, "workspaces": [OTHER_WORKSPACE_ID]}
CLAIM = "extension_CustomerId"


def principal(customer: str | None = None, roles: tuple[str, ...] = (), provider: str = "aad") -> dict[str, str]:
    """App Service Authentication's headers for a user of ``customer`` (the claim) with ``roles``."""
    claims = [{"typ": "preferred_username", "val": "alice@contoso.com"}]
    claims += [{"typ": CLAIM, "val": customer}] if customer else []
    claims += [{"typ": "roles", "val": role} for role in roles]
    encoded = json.dumps({"auth_typ": provider, "role_typ": "roles", "claims": claims})
    return {
        "X-MS-CLIENT-PRINCIPAL": base64.b64encode(encoded.encode()).decode(),
        "X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com",
        "X-MS-CLIENT-PRINCIPAL-IDP": provider,
    }


def answer(response: Any) -> tuple[int, str]:
    return response.status_code, json.loads(response.get_body()).get("error", {}).get("code", "")


def power_bi_calls(fake: FakeUpstream) -> list[Any]:
    return fake.calls(path_contains="/v1.0/")


def profiles_sent(fake: FakeUpstream) -> list[str | None]:
    return [r.headers.get("x-powerbi-profile-id") for r in power_bi_calls(fake)]


@pytest.fixture
def customers(env: dict[str, str], fake: FakeUpstream) -> dict[str, str]:
    """A service principal serving two customers from POWERBI_CUSTOMERS, each found by a claim; each profile
    a member of its customer's workspace only (the emulator refuses a profile it does not know, as Power BI)."""
    fake.add_profile("Contoso", profile_id=PROFILE_A, workspaces=[WORKSPACE_ID])
    fake.add_profile("Fabrikam", profile_id=PROFILE_B, workspaces=[OTHER_WORKSPACE_ID])
    fake.add_profile("Initech", profile_id=PROFILE_C, workspaces=[WORKSPACE_ID])
    for name in ("POWERBI_USERNAME", "POWERBI_PASSWORD", "POWERBI_WORKSPACE_ID"):
        del env[name]
    env.update(
        {
            "POWERBI_AUTH_MODE": "ServicePrincipal",
            "WEBSITE_AUTH_ENABLED": "True",
            "POWERBI_CUSTOMERS_SOURCE": "setting",
            "POWERBI_CUSTOMER_FROM": f"claim:{CLAIM}",
            "POWERBI_CUSTOMERS": json.dumps([CUSTOMER_A, CUSTOMER_B]),
        }
    )
    return env


# --- the two forms of a customer ---------------------------------------------------------------------------


def test_a_customer_round_trips_through_json_and_a_table_entity() -> None:
    customer = Customer.from_json(
        CUSTOMER_A | {"reports": [REPORT_ID.upper()], "workspaces": [WORKSPACE_ID, OTHER_WORKSPACE_ID]}
    )

    assert customer.id == "contoso" and customer.default_workspace == WORKSPACE_ID
    assert customer.reports == frozenset([REPORT_ID])
    assert customer.to_entity() == {
        "PartitionKey": "customer",
        "RowKey": "contoso",
        "ProfileId": PROFILE_A,
        "Workspaces": f"{WORKSPACE_ID},{OTHER_WORKSPACE_ID}",
        "Reports": REPORT_ID,
        "DisplayName": "Contoso",
    }
    assert Customer.from_entity(customer.to_entity()) == customer
    assert Customer.from_json(customer.to_json()) == customer
    assert Customer.from_json({"id": "x", "workspaces": [WORKSPACE_ID]}).to_json() == {
        "id": "x",
        "workspaces": [WORKSPACE_ID],
    }


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"id": "x", "workspaces": []}, "at least one workspace"),
        ({"id": "x"}, "workspaces is required"),
        ({"id": "x", "workspaces": ["not-a-guid"]}, "GUIDs"),
        ({"id": "x", "workspaces": [WORKSPACE_ID], "profileId": "nope"}, "profileId must be a GUID"),
        ({"id": "", "workspaces": [WORKSPACE_ID]}, "non-empty"),
        ({"id": "a/b", "workspaces": [WORKSPACE_ID]}, "without /"),
        ({"id": "x", "workspaces": [WORKSPACE_ID], "reports": []}, "at least one id"),
        ({"id": "x", "workspaces": [WORKSPACE_ID], "workspace": "typo"}, "unknown field"),
    ],
)
def test_an_invalid_customer_says_what_is_wrong(data: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Customer.from_json(data)


# --- settings --------------------------------------------------------------------------------------------------


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    return "; ".join(caught.value.problems)


def test_the_setting_directory_is_parsed_and_validated_once(customers: dict[str, str]) -> None:
    settings = Settings.from_env(customers)

    assert settings.customers is not None and settings.customers.source == "setting"
    assert [c.id for c in settings.customers.customers] == ["contoso", "fabrikam"]
    assert (settings.customers.customer_from.kind, settings.customers.customer_from.value) == ("claim", CLAIM)
    assert settings.customers.ttl_seconds == 300


@pytest.mark.parametrize(
    ("directory", "says"),
    [
        ([CUSTOMER_A, CUSTOMER_B | {"id": "CONTOSO"}], "customer id contoso is listed twice"),
        ([CUSTOMER_A, CUSTOMER_B | {"workspaces": [WORKSPACE_ID]}], f"workspace {WORKSPACE_ID} is listed by"),
        ([CUSTOMER_A | {"profileId": "x"}], "POWERBI_CUSTOMERS[0]: customer contoso: profileId must be a GUID"),
        ([], "at least one customer"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_setting_directory_that_is_not_valid_is_a_configuration_error(
    customers: dict[str, str], directory: Any, says: str
) -> None:
    customers["POWERBI_CUSTOMERS"] = directory if isinstance(directory, str) else json.dumps(directory)

    assert says in problems(customers)


@pytest.mark.parametrize(
    "name",
    [
        "POWERBI_WORKSPACE_ID",
        "POWERBI_ALLOWED_WORKSPACES",
        "POWERBI_ALLOWED_REPORTS",
        "POWERBI_ALLOWED_DASHBOARDS",
        "POWERBI_PROFILE_ID",
    ],
)
def test_the_global_scope_must_be_unset_with_a_source(customers: dict[str, str], name: str) -> None:
    customers[name] = WORKSPACE_ID

    assert f"{name} must be unset with POWERBI_CUSTOMERS_SOURCE=setting" in problems(customers)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"POWERBI_CUSTOMER_FROM": ""}, "POWERBI_CUSTOMER_FROM is required"),
        ({"POWERBI_CUSTOMER_FROM": "header:x-customer"}, "POWERBI_CUSTOMER_FROM must be claim:"),
        ({"POWERBI_CUSTOMERS_SOURCE": "cosmos"}, "POWERBI_CUSTOMERS_SOURCE must be one of none, setting, table"),
        ({"POWERBI_CUSTOMERS_TTL_SECONDS": "0"}, "POWERBI_CUSTOMERS_TTL_SECONDS must be"),
        ({"WEBSITE_AUTH_ENABLED": "false"}, "needs App Service Authentication"),
        ({"POWERBI_CUSTOMERS_SOURCE": "table"}, "set AzureWebJobsStorage (a connection string) or"),
        (
            {"POWERBI_CUSTOMERS_SOURCE": "table", "AzureWebJobsStorage": "x", "POWERBI_CUSTOMERS_TABLE": "a-b"},
            "POWERBI_CUSTOMERS_TABLE must be a table name",
        ),
    ],
)
def test_customers_settings_are_named_when_wrong(customers: dict[str, str], change: dict[str, str], says: str) -> None:
    customers.update(change)

    assert says in problems(customers)


def test_a_table_connection_is_read_the_way_azure_functions_reads_one(customers: dict[str, str]) -> None:
    customers.update({"POWERBI_CUSTOMERS_SOURCE": "table", "POWERBI_CUSTOMERS_CONNECTION": "Tenants"})
    del customers["POWERBI_CUSTOMERS"]
    identity = str(uuid.uuid4())
    customers.update(
        {"Tenants__tableServiceUri": "https://acct.table.core.windows.net/", "Tenants__clientId": identity}
    )

    concern = Settings.from_env(customers).customers
    assert concern is not None and concern.connection is not None
    assert (concern.table, concern.connection.service_uri) == ("customers", "https://acct.table.core.windows.net")
    assert concern.connection.client_id == identity and concern.connection.connection_string is None
    managed = table_client(concern)
    assert managed.url.startswith("https://acct.table.core.windows.net") and managed.table_name == "customers"

    customers["Tenants"] = "UseDevelopmentStorage=true"
    concern = Settings.from_env(customers).customers
    assert concern is not None and concern.connection is not None
    assert concern.connection.connection_string == "UseDevelopmentStorage=true"
    assert table_client(concern).url.startswith("http://127.0.0.1:10002/devstoreaccount1")


def test_the_table_account_key_never_reaches_a_log_line(customers: dict[str, str], azurite: AzuriteTables) -> None:
    from tests.azurite import ACCOUNT_KEY

    customers.update({"POWERBI_CUSTOMERS_SOURCE": "table", "AzureWebJobsStorage": azurite.connection_string})
    concern = Settings.from_env(customers).customers
    assert concern is not None
    table_client(concern)

    assert ACCOUNT_KEY not in redact(f"reading with key {ACCOUNT_KEY}")
    assert azurite.connection_string not in redact(f"connection {azurite.connection_string}")


def test_the_table_libraries_are_imported_only_with_the_table_source(customers: dict[str, str]) -> None:
    script = (
        "import os, sys, function_app; from shared.embed import EmbedService; from shared.settings import Settings;"
        "EmbedService.create(Settings.from_env(os.environ));"
        "print(sorted(m for m in ('azure.data.tables', 'azure.identity') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    for source, expected in (("setting", "[]"), ("table", "['azure.data.tables']")):
        env = customers | {"POWERBI_CUSTOMERS_SOURCE": source, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
        done = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected


# --- each request for exactly one customer, and only its workspaces --------------------------------------------


def test_a_customers_user_gets_its_report_through_its_profile(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    response = call(f"/api/embed/reports/{REPORT_ID}", principal("contoso"))

    assert response.status_code == 200
    assert json.loads(response.get_body())["workspaceId"] == WORKSPACE_ID  # the customer's first workspace
    assert len(power_bi_calls(fake)) == 3  # reports list, datasets list, GenerateToken
    assert profiles_sent(fake) == [PROFILE_A] * 3
    assert all("x-powerbi-profile-id" not in r.headers for r in fake.token_calls)


def test_isolation_both_ways_another_customers_workspace_is_403_with_no_upstream_call(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    a_asks_b = call(f"/api/embed/reports/{OTHER_REPORT_ID}", principal("CONTOSO"), workspaceId=OTHER_WORKSPACE_ID)
    b_asks_a = call(f"/api/embed/reports/{REPORT_ID}", principal("fabrikam"), workspaceId=WORKSPACE_ID)

    assert answer(a_asks_b) == (403, "not_allowed")
    assert answer(b_asks_a) == (403, "not_allowed")
    assert fake.requests == []  # not even a sign-in

    b_own = call(f"/api/embed/reports/{OTHER_REPORT_ID}", principal("fabrikam"))
    assert b_own.status_code == 200
    assert profiles_sent(fake) == [PROFILE_B] * 3


def test_a_customers_report_allow_list_applies(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    customers["POWERBI_CUSTOMERS"] = json.dumps([CUSTOMER_A | {"reports": [RLS_REPORT_ID]}])

    assert answer(call(f"/api/embed/reports/{REPORT_ID}", principal("contoso"))) == (403, "not_allowed")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (401, "unauthenticated")),
        (principal("contoso", provider="github"), (401, "unauthenticated")),
        (principal("initech"), (403, "not_allowed")),  # not in the directory
        (principal(None), (403, "not_allowed")),  # no customer claim
    ],
)
def test_no_principal_is_401_and_no_customer_is_403_without_a_power_bi_call(
    call: Callable[..., Any],
    fake: FakeUpstream,
    customers: dict[str, str],
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    assert answer(call(f"/api/embed/reports/{REPORT_ID}", headers)) == expected
    assert fake.requests == []


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (("reader", "customer-Contoso"), 200),
        (("reader",), 403),  # no matching role
        (("customer-contoso", "customer-fabrikam"), 403),  # several
    ],
)
def test_a_customer_from_the_users_one_role_with_the_prefix(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str], roles: tuple[str, ...], expected: int
) -> None:
    customers["POWERBI_CUSTOMER_FROM"] = "role:customer-"

    response = call(f"/api/embed/reports/{REPORT_ID}", principal(None, roles))

    assert response.status_code == expected
    assert profiles_sent(fake) == ([PROFILE_A] * 3 if expected == 200 else [])


def test_a_customer_from_a_static_web_apps_role(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    customers["POWERBI_CUSTOMER_FROM"] = "role:customer-"
    swa = {
        "identityProvider": "aad",
        "userDetails": "bob@fabrikam.com",
        "userRoles": ["authenticated", "customer-fabrikam"],
    }
    headers = {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(swa).encode()).decode()}

    assert call(f"/api/embed/reports/{OTHER_REPORT_ID}", headers).status_code == 200
    assert profiles_sent(fake) == [PROFILE_B] * 3


def test_one_entra_token_serves_every_profile_and_each_call_carries_only_its_own(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}", principal("contoso")).status_code == 200
    assert call(f"/api/embed/reports/{OTHER_REPORT_ID}", principal("fabrikam")).status_code == 200
    assert call(f"/api/embed/reports/{REPORT_ID}", principal("contoso")).status_code == 200  # cached

    assert len(fake.token_calls) == 1
    sent = [(r.path, r.headers.get("x-powerbi-profile-id")) for r in power_bi_calls(fake)]
    assert len(sent) == 6
    assert [p for _, p in sent] == [PROFILE_A] * 3 + [PROFILE_B] * 3


def test_row_level_security_works_inside_a_customers_workspace(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    customers.update({"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region"})

    assert call(f"/api/embed/reports/{RLS_REPORT_ID}", principal("contoso")).status_code == 200
    (generate,) = fake.calls("POST", "GenerateToken")
    assert generate.json["identities"] == [
        {"username": "alice@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}
    ]
    assert generate.headers["x-powerbi-profile-id"] == PROFILE_A


def test_a_customer_with_a_profile_under_a_master_user_is_a_configuration_error_naming_it(
    call: Callable[..., Any],
    fake: FakeUpstream,
    customers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_profile = {"id": "fabrikam", "workspaces": [OTHER_WORKSPACE_ID]}
    customers.update(
        {
            "POWERBI_AUTH_MODE": "MasterUser",
            "POWERBI_USERNAME": USERNAME,
            "POWERBI_PASSWORD": PASSWORD,
            "POWERBI_CUSTOMERS": json.dumps([CUSTOMER_A, no_profile]),
        }
    )
    caplog.set_level(logging.INFO)

    assert answer(call(f"/api/embed/reports/{REPORT_ID}", principal("contoso"))) == (500, "configuration_error")
    assert fake.requests == []
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "shared.responses")
    assert "customer contoso has a profile" in logged and "MasterUser" in logged

    assert call(f"/api/embed/reports/{OTHER_REPORT_ID}", principal("fabrikam")).status_code == 200
    assert profiles_sent(fake) == [None] * 3


# --- the table directory, against Azurite ---------------------------------------------------------------------


@pytest.fixture
def table(azurite: AzuriteTables) -> Iterator[TableClient]:
    client = TableClient.from_connection_string(azurite.connection_string, f"t{uuid.uuid4().hex[:12]}")
    client.create_table()
    yield client
    client.delete_table()


@pytest.fixture
def table_env(customers: dict[str, str], table: TableClient, azurite: AzuriteTables) -> dict[str, str]:
    del customers["POWERBI_CUSTOMERS"]
    customers.update(
        {
            "POWERBI_CUSTOMERS_SOURCE": "table",
            "POWERBI_CUSTOMERS_TABLE": table.table_name,
            "POWERBI_CUSTOMERS_CONNECTION": "CustomersStorage",
            "CustomersStorage": azurite.connection_string,
            "POWERBI_CUSTOMERS_TTL_SECONDS": "60",
        }
    )
    for data in (CUSTOMER_A, CUSTOMER_B):
        table.upsert_entity(Customer.from_json(data).to_entity())
    return customers


@pytest.fixture
def counted(
    table_env: dict[str, str],
    make_service: Callable[[dict[str, str]], EmbedService],
    clock: FakeClock,
    routes: FunctionRoutes,
    monkeypatch: pytest.MonkeyPatch,
) -> CountingTable:
    """The app on the table directory, its point reads counted."""
    for name, value in table_env.items():
        monkeypatch.setenv(name, value)
    service = make_service(table_env)
    assert service.customers is not None and service.settings.customers is not None
    reads = CountingTable(table_client(service.settings.customers))
    service.customers.directory = TableDirectory(reads, 60, clock=clock)
    function_app.use_service(service)
    return reads


def test_the_table_directory_reads_each_customer_once_per_ttl(
    counted: CountingTable, routes: FunctionRoutes, fake: FakeUpstream, clock: FakeClock
) -> None:
    for _ in range(3):
        assert routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("contoso")).status_code == 200
    assert routes.dispatch("GET", f"/api/embed/reports/{OTHER_REPORT_ID}", {}, principal("fabrikam")).status_code == 200
    assert counted.reads == ["contoso", "fabrikam"]
    assert profiles_sent(fake) == [PROFILE_A] * 3 + [PROFILE_B] * 3

    clock.advance(61)
    assert routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("contoso")).status_code == 200
    assert counted.reads == ["contoso", "fabrikam", "contoso"]


def test_an_absent_customer_is_remembered_as_absent_for_the_ttl(
    counted: CountingTable, routes: FunctionRoutes, fake: FakeUpstream, clock: FakeClock, table: TableClient
) -> None:
    for _ in range(3):
        response = routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("initech"))
        assert answer(response) == (403, "not_allowed")
    assert counted.reads == ["initech"]
    assert fake.requests == []

    table.upsert_entity(Customer.from_json({"id": "initech", "workspaces": [WORKSPACE_ID]}).to_entity())
    clock.advance(61)
    assert routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("initech")).status_code == 200
    assert counted.reads == ["initech", "initech"]


def test_concurrent_reads_of_one_customer_share_one_call(table: TableClient, clock: FakeClock) -> None:
    table.upsert_entity(Customer.from_json(CUSTOMER_A).to_entity())
    reads = CountingTable(table, delay=0.3)
    directory = TableDirectory(reads, 60, clock=clock)
    start = threading.Barrier(16)
    found: list[Customer | None] = []

    def find() -> None:
        start.wait()
        found.append(directory.find("contoso"))

    threads = [threading.Thread(target=find) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert reads.reads == ["contoso"]
    assert len(found) == 16 and {c.profile_id if c else None for c in found} == {PROFILE_A}


def test_at_most_so_many_customers_are_kept(table: TableClient, clock: FakeClock) -> None:
    assert MAX_CUSTOMERS == 10_000
    directory = TableDirectory(CountingTable(table), 60, clock=clock, max_customers=3)

    for n in range(5):
        assert directory.find(f"c{n}") is None

    assert len(directory) == 3


def test_an_invalid_entity_is_a_configuration_error_naming_the_customer(
    counted: CountingTable,
    routes: FunctionRoutes,
    fake: FakeUpstream,
    table: TableClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table.upsert_entity({"PartitionKey": "customer", "RowKey": "broken", "Workspaces": "not-a-guid"})

    assert answer(routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("broken"))) == (
        500,
        "configuration_error",
    )
    assert fake.requests == []
    assert "customer broken: its table entity is not valid" in caplog.text


def test_a_table_that_cannot_be_read_is_503_and_an_entry_read_before_keeps_serving(
    table_env: dict[str, str],
    make_service: Callable[[dict[str, str]], EmbedService],
    fake: FakeUpstream,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    own = AzuriteTables(tmp_path).start()
    try:
        client = TableClient.from_connection_string(own.connection_string, "customers")
        client.create_table()
        client.upsert_entity(Customer.from_json(CUSTOMER_A).to_entity())
        del table_env["POWERBI_CUSTOMERS_TABLE"]
        service = make_service(table_env | {"CustomersStorage": own.connection_string})
        assert service.customer_for(principal("contoso")) is not None
    finally:
        own.stop()

    clock.advance(61)  # the entry is due for a read, and the table is gone
    contoso = service.customer_for(principal("contoso"))
    assert contoso is not None and contoso.profile_id == PROFILE_A
    with pytest.raises(Exception) as caught:
        service.customer_for(principal("fabrikam"))
    error: Any = caught.value
    assert (error.status, error.code, error.headers) == (503, "unavailable", {"Retry-After": str(RETRY_AFTER_SECONDS)})
    assert fake.requests == []


def test_a_missing_table_is_503_not_500(
    counted: CountingTable, routes: FunctionRoutes, fake: FakeUpstream, table: TableClient
) -> None:
    table.delete_table()
    try:
        response = routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("contoso"))
        assert answer(response) == (503, "unavailable")
        assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert fake.requests == []
    finally:
        table.create_table()


# --- cache separation: a workspace two customers' profiles reach (a table cannot forbid it) -------------------


def test_the_catalog_and_token_caches_keep_each_profile_apart(
    counted: CountingTable, routes: FunctionRoutes, fake: FakeUpstream, table: TableClient
) -> None:
    table.upsert_entity(
        Customer.from_json({"id": "initech", "profileId": PROFILE_C, "workspaces": [WORKSPACE_ID]}).to_entity()
    )

    a = routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("contoso"))
    c = routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("initech"))

    assert a.status_code == c.status_code == 200
    assert json.loads(a.get_body())["accessToken"] != json.loads(c.get_body())["accessToken"]
    assert profiles_sent(fake) == [PROFILE_A] * 3 + [PROFILE_C] * 3  # C reused nothing A's profile read


def test_the_shared_cache_keeps_each_profile_apart(
    table_env: dict[str, str],
    make_service: Callable[[dict[str, str]], EmbedService],
    fake: FakeUpstream,
    table: TableClient,
    redis_server: Any,
) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    shared = table_env | {"POWERBI_CACHE_URL": redis_server.url, "POWERBI_CACHE_ENCRYPTION_KEY": key}
    table.upsert_entity(
        Customer.from_json({"id": "initech", "profileId": PROFILE_C, "workspaces": [WORKSPACE_ID]}).to_entity()
    )
    first, second, third = make_service(shared), make_service(shared), make_service(shared)

    first.embed("report", REPORT_ID, customer=first.customer_for(principal("contoso")))
    second.embed("report", REPORT_ID, customer=second.customer_for(principal("initech")))  # another worker
    assert profiles_sent(fake) == [PROFILE_A] * 3 + [PROFILE_C] * 3
    third.embed("report", REPORT_ID, customer=third.customer_for(principal("contoso")))  # A's, from Redis
    assert len(power_bi_calls(fake)) == 6


def test_a_table_read_logs_one_line_of_ours_not_the_sdks_headers(
    counted: CountingTable, routes: FunctionRoutes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    assert routes.dispatch("GET", f"/api/embed/reports/{REPORT_ID}", {}, principal("contoso")).status_code == 200

    assert counted.reads == ["contoso"]
    assert not [r for r in caplog.records if r.name.startswith("azure.core")]


def test_claim_tid_finds_the_customer_by_the_principals_tenant(
    call: Callable[..., Any], fake: FakeUpstream, customers: dict[str, str]
) -> None:
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    customers.update(
        {
            "POWERBI_CUSTOMER_FROM": "claim:tid",
            "POWERBI_CUSTOMERS": json.dumps([CUSTOMER_A | {"id": tenant}]),
        }
    )
    # App Service maps tid to its long claim type: either form names the tenant.
    encoded = json.dumps(
        {"auth_typ": "aad", "claims": [{"typ": "http://schemas.microsoft.com/identity/claims/tenantid", "val": tenant}]}
    )
    headers = {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(encoded.encode()).decode(), "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}

    assert call(f"/api/embed/reports/{REPORT_ID}", headers).status_code == 200
    assert profiles_sent(fake) == [PROFILE_A] * 3


def test_a_refresh_ahead_in_the_background_is_made_as_the_customers_profile(
    customers: dict[str, str], fake: FakeUpstream, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emulator.entra import emulator_session
    from tests.conftest import ManualBackground

    monkeypatch.setattr(fake, "clock", clock.now)  # tokens live and expire in the test's time
    background = ManualBackground()
    settings = Settings.from_env(customers)
    service = EmbedService.create(settings, clock=clock, session=emulator_session(fake.base_url), background=background)
    contoso = service.customer_for(principal("contoso"))

    first = service.embed("report", REPORT_ID, customer=contoso)
    clock.advance(45 * 60)  # inside the refresh window: still handed out, and re-minted in the background
    assert service.embed("report", REPORT_ID, customer=contoso) == first
    background.run()

    minted = fake.calls("POST", "GenerateToken")
    assert len(minted) == 2  # the request's and the background's
    assert [r.headers.get("x-powerbi-profile-id") for r in minted] == [PROFILE_A, PROFILE_A]
    assert set(profiles_sent(fake)) == {PROFILE_A}

"""Whose principal row-level security believes: App Service's and Static Web Apps' formats, provider and
tenant pinning, usernames Power BI would refuse, and roles from the signed-in user, against the emulator."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from emulator import REPORT_ID, RLS_DATASET_ID, RLS_REPORT_ID, FakeUpstream

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "3d9b93c6-7b6d-4801-a491-1738910904fd"
ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
RLS = f"/api/embed/reports/{RLS_REPORT_ID}"


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def swa(
    user: str = "alice@contoso.com",
    roles: tuple[str, ...] = ("anonymous", "authenticated"),
    provider: str = "aad",
    claims: dict[str, str] | None = None,
) -> dict[str, str]:
    """Static Web Apps' principal, as it reaches a linked backend (no other principal header)."""
    principal: dict[str, Any] = {
        "identityProvider": provider,
        "userId": "d75b260a64504067bfc5b2905e3b8182",
        "userDetails": user,
        "userRoles": list(roles),
    }
    if claims is not None:
        principal["claims"] = [{"typ": k, "val": v} for k, v in claims.items()]
    return {"x-ms-client-principal": b64(principal)}


def app_service(
    name: str = "alice@contoso.com",
    idp: str | None = "aad",
    auth_typ: str = "aad",
    claims: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> dict[str, str]:
    """App Service Authentication's headers."""
    principal = {
        "auth_typ": auth_typ,
        "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
        "role_typ": ROLE_TYPE,
        "claims": [{"typ": t, "val": v} for t, v in claims],
    }
    headers = {"X-MS-CLIENT-PRINCIPAL": b64(principal), "X-MS-CLIENT-PRINCIPAL-NAME": name}
    if idp is not None:
        headers["X-MS-CLIENT-PRINCIPAL-IDP"] = idp
    return headers


def outcome(response: Any) -> tuple[int, str]:
    return response.status_code, json.loads(response.get_body()).get("error", {}).get("code", "")


def sent_identities(fake: FakeUpstream) -> list[Any]:
    return [r.json.get("identities") for r in fake.calls("POST", "GenerateToken")]


@pytest.fixture
def rls(env: dict[str, str]) -> dict[str, str]:
    env.update(
        {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region", "WEBSITE_AUTH_ENABLED": "True"}
    )
    return env


@pytest.fixture
def roles_from_principal(rls: dict[str, str]) -> dict[str, str]:
    del rls["POWERBI_RLS_ROLES"]
    rls.update({"POWERBI_RLS_ROLES_SOURCE": "principal", "POWERBI_RLS_ALLOWED_ROLES": "Region,Manager"})
    return rls


# --- Static Web Apps' principal -----------------------------------------------------------------------------


def test_a_static_web_apps_principal_gives_its_user_details(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    assert call(RLS, swa("alice@contoso.com")).status_code == 200
    identity = {"username": "alice@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}
    assert sent_identities(fake) == [[identity]]


def test_a_static_web_apps_principal_with_claims_gives_the_named_claim(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    rls["POWERBI_RLS_USERNAME_CLAIM"] = "http://schemas.microsoft.com/identity/claims/objectidentifier"
    claims = {"http://schemas.microsoft.com/identity/claims/objectidentifier": "9f1c5e2a-0b7d-4e3f-8a6b-2c4d6e8f0a1b"}

    assert call(RLS, swa("alice@contoso.com", claims=claims)).status_code == 200
    assert sent_identities(fake)[0][0]["username"] == "9f1c5e2a-0b7d-4e3f-8a6b-2c4d6e8f0a1b"


def test_a_static_web_apps_principal_without_the_claim_is_not_signed_in(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    rls["POWERBI_RLS_USERNAME_CLAIM"] = "preferred_username"  # SWA forwards no claims by default

    assert outcome(call(RLS, swa())) == (401, "unauthenticated")
    assert fake.requests == []


def test_a_static_web_apps_principal_is_believed_only_behind_the_platforms_authentication(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    del rls["WEBSITE_AUTH_ENABLED"]

    response = call(RLS, swa())

    assert outcome(response) == (500, "configuration_error")
    assert "Static Web App" in json.loads(response.get_body())["error"]["message"]
    assert fake.requests == []


# --- the identity provider and the tenant are pinned ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        swa(provider="github"),
        swa(provider=""),
        app_service(idp="github", auth_typ="github"),
        app_service(idp="google"),
        app_service(idp=None, auth_typ="google"),
        app_service(idp="aad", auth_typ="google"),
        {"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com"},  # no provider stated at all
    ],
    ids=["swa-github", "swa-none", "github", "google-header", "google-auth-typ", "mixed", "no-provider"],
)
def test_a_principal_of_another_provider_is_401_with_no_upstream_call(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str], headers: dict[str, str]
) -> None:
    assert outcome(call(RLS, headers)) == (401, "unauthenticated")
    assert fake.requests == []


def test_the_pinned_provider_can_be_another_one(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    rls["POWERBI_RLS_IDENTITY_PROVIDER"] = "GitHub"

    assert call(RLS, swa("octocat", provider="github")).status_code == 200
    assert outcome(call(RLS, swa("alice@contoso.com", provider="aad"))) == (401, "unauthenticated")


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ([("http://schemas.microsoft.com/identity/claims/tenantid", TENANT)], 200),
        ([("tid", TENANT.upper())], 200),
        ([("tid", OTHER_TENANT)], 401),
        ([("tid", "not-a-guid")], 401),
        ([], 401),
    ],
    ids=["long-claim", "short-claim", "other-tenant", "not-a-guid", "no-tid"],
)
def test_allowed_tenants_check_the_tid_claim(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str], claims: list[tuple[str, str]], status: int
) -> None:
    rls["POWERBI_RLS_ALLOWED_TENANTS"] = f"{TENANT}, 00000000-0000-0000-0000-000000000001"

    assert call(RLS, app_service(claims=claims)).status_code == status
    if status == 401:
        assert fake.requests == []


# --- usernames Power BI refuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["josé@contoso.com", "alice\t@contoso.com", "al\x7fice@contoso.com", "名前"])
def test_a_username_outside_printable_ascii_is_400_before_any_upstream_call(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str], name: str
) -> None:
    assert outcome(call(RLS, swa(name))) == (400, "invalid_request")
    assert fake.requests == []


def test_every_printable_ascii_character_but_the_space_is_accepted(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    name = "".join(chr(c) for c in range(0x21, 0x7F))

    assert call(RLS, swa(name)).status_code == 200
    assert sent_identities(fake)[0][0]["username"] == name


# --- roles from the signed-in user ---------------------------------------------------------------------------


def test_static_web_apps_roles_are_sent_only_when_allowed(
    call: Callable[..., Any], fake: FakeUpstream, roles_from_principal: dict[str, str]
) -> None:
    user = swa(roles=("anonymous", "authenticated", "Region", "Admin", "Manager"))

    assert call(RLS, user).status_code == 200
    assert sent_identities(fake)[0][0]["roles"] == ["Manager", "Region"]


def test_app_service_roles_are_the_claims_of_its_role_type(
    call: Callable[..., Any], fake: FakeUpstream, roles_from_principal: dict[str, str]
) -> None:
    claims = [(ROLE_TYPE, "Region"), (ROLE_TYPE, "Admin"), ("roles", "Manager"), ("groups", "Region2")]

    assert call(RLS, app_service(claims=claims)).status_code == 200
    assert sent_identities(fake)[0][0]["roles"] == ["Region"]


def test_the_built_in_roles_are_never_sent(
    call: Callable[..., Any], fake: FakeUpstream, roles_from_principal: dict[str, str]
) -> None:
    roles_from_principal["POWERBI_RLS_ALLOWED_ROLES"] = "Region,authenticated,anonymous"

    assert call(RLS, swa(roles=("anonymous", "authenticated", "Region"))).status_code == 200
    assert sent_identities(fake)[0][0]["roles"] == ["Region"]


def test_a_user_with_no_allowed_role_gets_no_role(
    call: Callable[..., Any], fake: FakeUpstream, roles_from_principal: dict[str, str]
) -> None:
    # A plain report needs no role: the user still gets it, and no role is made up.
    admin = swa(roles=("anonymous", "authenticated", "Admin"))
    assert call(f"/api/embed/reports/{REPORT_ID}", admin).status_code == 200
    assert sent_identities(fake) == [None]
    # The RLS dataset requires a role: nothing is sent to Power BI without one.
    # The user's account lacks the role, not the configuration: 403, not a 500.
    fake.reset_records()
    refused = call(RLS, admin)
    assert (refused.status_code, json.loads(refused.get_body())["error"]["code"]) == (403, "not_allowed")
    assert not fake.calls("POST", "GenerateToken")


def test_the_cache_key_holds_the_roles_sent(
    call: Callable[..., Any], fake: FakeUpstream, roles_from_principal: dict[str, str]
) -> None:
    base = ("anonymous", "authenticated", "Region")
    first = json.loads(call(RLS, swa(roles=base)).get_body())["accessToken"]
    # A role that is dropped changes nothing: the same token, no second GenerateToken.
    same = json.loads(call(RLS, swa(roles=(*base, "Admin"))).get_body())["accessToken"]
    other = json.loads(call(RLS, swa(roles=(*base, "Manager"))).get_body())["accessToken"]

    assert first == same != other
    assert [i[0]["roles"] for i in sent_identities(fake)] == [["Region"], ["Manager", "Region"]]


def test_the_log_line_says_why_a_principal_was_refused(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    rls["POWERBI_RLS_ALLOWED_TENANTS"] = TENANT

    call(RLS, swa(provider="github"))
    call(RLS, app_service(claims=[("tid", OTHER_TENANT)]))

    logged = [r.getMessage() for r in caplog.records if r.name == "shared.responses"]
    assert "principal of provider github refused: POWERBI_RLS_IDENTITY_PROVIDER is aad" in logged[0]
    assert "its tid is not in POWERBI_RLS_ALLOWED_TENANTS" in logged[1]

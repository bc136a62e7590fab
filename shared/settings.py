"""App settings: read once, validated once, by concern, named in every complaint, never echoed.

The setting names are the product's contract (static sites, deploy scripts and
acceptance tests depend on them). A problem is reported by the setting's name and
what is wrong with it; a value is never shown, since many are secrets.

Each concern (sign-in, Power BI, policy, row-level security, caches, shared cache, telemetry) is a
frozen dataclass built by its own small ``read_*`` function from the one ``Reader``, the
only code that looks at the environment. A new concern is one dataclass, one reader
function and one line in ``Settings.from_env``. Only what the chosen sign-in mode uses is
read: an unresolved Key Vault reference in a setting the mode ignores is not an error.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from shared.errors import ConfigurationError

if TYPE_CHECKING:
    from shared.customers.config import CustomersSettings

AuthMode = Literal["MasterUser", "ServicePrincipal", "ManagedIdentity"]
AUTH_MODES: tuple[AuthMode, ...] = ("MasterUser", "ServicePrincipal", "ManagedIdentity")
HTTP_AUTH_LEVELS = ("function", "anonymous", "admin")


@dataclass(frozen=True)
class Cloud:
    """Where a Power BI cloud signs in and answers (Microsoft's published endpoints)."""

    authority_host: str
    api_url: str
    resource: str
    # The audience of a managed identity's token that an app registration trusts as its credential
    # (a federated identity credential), as Microsoft documents it for this cloud's Entra ID.
    federated_audience: str = "api://AzureADTokenExchange"


CLOUDS: dict[str, Cloud] = {
    "Public": Cloud(
        "https://login.microsoftonline.com", "https://api.powerbi.com", "https://analysis.windows.net/powerbi/api"
    ),
    "USGov": Cloud(  # GCC: commercial Entra ID, government Power BI
        "https://login.microsoftonline.com",
        "https://api.powerbigov.us",
        "https://analysis.usgovcloudapi.net/powerbi/api",
    ),
    "USGovHigh": Cloud(
        "https://login.microsoftonline.us",
        "https://api.high.powerbigov.us",
        "https://high.analysis.usgovcloudapi.net/powerbi/api",
        "api://AzureADTokenExchangeUSGov",
    ),
    "USGovDoD": Cloud(
        "https://login.microsoftonline.us",
        "https://api.mil.powerbigov.us",
        "https://mil.analysis.usgovcloudapi.net/powerbi/api",
        "api://AzureADTokenExchangeUSGov",
    ),
    "China": Cloud(
        "https://login.chinacloudapi.cn",
        "https://api.powerbi.cn",
        "https://analysis.chinacloudapi.cn/powerbi/api",
        "api://AzureADTokenExchangeChina",
    ),
}

# Every setting the function reads, in the order the doctor lists them; secrets are only ever "set".
SETTING_NAMES = (
    "POWERBI_AUTH_MODE",
    "POWERBI_CLOUD",
    "POWERBI_TENANT_ID",
    "POWERBI_CLIENT_ID",
    "POWERBI_CLIENT_SECRET",
    "POWERBI_CLIENT_CERTIFICATE",
    "POWERBI_CLIENT_CERTIFICATE_PATH",
    "POWERBI_CLIENT_ASSERTION",
    "POWERBI_USERNAME",
    "POWERBI_PASSWORD",
    "POWERBI_MANAGED_IDENTITY_CLIENT_ID",
    "POWERBI_PROFILE_ID",
    "POWERBI_AUTHORITY_HOST",
    "POWERBI_API_URL",
    "POWERBI_SCOPE",
    "POWERBI_WORKSPACE_ID",
    "POWERBI_ALLOWED_WORKSPACES",
    "POWERBI_ALLOWED_REPORTS",
    "POWERBI_ALLOWED_DASHBOARDS",
    "POWERBI_TOKEN_LIFETIME_MINUTES",
    "POWERBI_MIN_TOKEN_MINUTES",
    "POWERBI_REQUEST_DEADLINE_SECONDS",
    "POWERBI_HTTP_AUTH_LEVEL",
    "POWERBI_RLS_USERNAME_SOURCE",
    "POWERBI_RLS_USERNAME_CLAIM",
    "POWERBI_RLS_ROLES",
    "POWERBI_RLS_CUSTOM_DATA_CLAIM",
    "POWERBI_ALLOW_EDIT",
    # Whose principal is believed, and where roles come from (row-level security).
    "POWERBI_RLS_IDENTITY_PROVIDER",
    "POWERBI_RLS_ALLOWED_TENANTS",
    "POWERBI_RLS_ROLES_SOURCE",
    "POWERBI_RLS_ALLOWED_ROLES",
    "POWERBI_CATALOG_TTL_SECONDS",
    "POWERBI_CATALOG_REFRESH_SECONDS",
    "POWERBI_CACHE_MAX_TOKENS",
    "POWERBI_ERROR_DETAILS",
    # The shared cache (Redis)
    "POWERBI_CACHE_URL",
    "POWERBI_CACHE_ENCRYPTION_KEY",
    "POWERBI_CACHE_TIMEOUT_MS",
    "POWERBI_CACHE_BREAKER_SECONDS",
    # Many customers: the directory, and how a signed-in user's customer is found
    "POWERBI_CUSTOMERS_SOURCE",
    "POWERBI_CUSTOMERS",
    "POWERBI_CUSTOMERS_TABLE",
    "POWERBI_CUSTOMERS_CONNECTION",
    "POWERBI_CUSTOMER_FROM",
    "POWERBI_CUSTOMERS_TTL_SECONDS",
    # Refresh ahead, stale values, and the budget for new tokens
    "POWERBI_REFRESH_AHEAD_MINUTES",
    "POWERBI_CATALOG_STALE_SECONDS",
    "POWERBI_MAX_NEW_TOKENS_PER_MINUTE",
    "POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE",
)
SECRET_SETTINGS = frozenset(
    {
        "POWERBI_CLIENT_SECRET",
        "POWERBI_CLIENT_CERTIFICATE",
        "POWERBI_PASSWORD",
        "POWERBI_CACHE_URL",  # may carry the Redis password
        "POWERBI_CACHE_ENCRYPTION_KEY",
    }
)

# App Service / Functions leave a Key Vault reference in place, literally, when it
# cannot resolve it. Such a value must never be used as a password or secret.
KEY_VAULT_REFERENCE = re.compile(r"^\s*@Microsoft\.KeyVault\(", re.IGNORECASE)
_MULTI_TENANT_ALIASES = frozenset({"organizations", "common", "consumers"})
MAX_MIN_TOKEN_MINUTES = 30  # of an Entra token's 60 to 90 minutes, leave most for reuse
MAX_TOKEN_LIFETIME_MINUTES = 60  # the shortest an Entra token lives; an embed token never outlives it
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_PEM_KEY = re.compile(r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.+?-----END (?:RSA |EC )?PRIVATE KEY-----", re.DOTALL)

# What a sign-in mode never reads: a value there (even an unresolved Key Vault reference) is ignored.
_CLIENT_CREDENTIALS = (
    "POWERBI_CLIENT_SECRET",
    "POWERBI_CLIENT_CERTIFICATE",
    "POWERBI_CLIENT_CERTIFICATE_PATH",
    "POWERBI_CLIENT_ASSERTION",
)
# POWERBI_CLIENT_ASSERTION's one value: the app registration trusts a user-assigned managed identity.
MANAGED_IDENTITY_ASSERTION = "managed_identity"
_USER_CREDENTIALS = ("POWERBI_USERNAME", "POWERBI_PASSWORD")
_UNUSED_BY_MODE: dict[str, frozenset[str]] = {
    "MasterUser": frozenset(),  # a secret or certificate makes the master user a confidential client
    "ServicePrincipal": frozenset(_USER_CREDENTIALS),
    "ManagedIdentity": frozenset(_CLIENT_CREDENTIALS + _USER_CREDENTIALS),
}


def parse_guid(value: str) -> str | None:
    """The canonical (lower-case, hyphenated) form of a GUID, or None if it is not one."""
    try:
        parsed = uuid.UUID(value.strip())
    except ValueError:
        return None
    # uuid.UUID also accepts braces and urn: prefixes; ids in URLs are the plain form.
    canonical = sys.intern(str(parsed))  # one string per id however many caches hold it
    return canonical if canonical == value.strip().lower() else None


@dataclass(frozen=True)
class Certificate:
    """A client certificate: MSAL computes the thumbprint from the certificate itself."""

    private_key: str = field(repr=False)
    certificate: str


@dataclass(frozen=True)
class SharedCacheSettings:
    """Where the shared cache (Redis) is and how its entries are sealed: POWERBI_CACHE_*."""

    url: str = field(repr=False)  # may hold a password
    encryption_key: bytes = field(repr=False)  # 32 bytes: AES-256-GCM
    timeout_seconds: float = 0.1
    breaker_seconds: float = 30.0  # how long Redis is left alone after it failed

    @property
    def uses_entra(self) -> bool:
        """No password in the URL: sign in to Redis with the app's managed identity (Entra ID)."""
        return urlsplit(self.url).password is None


@dataclass(frozen=True)
class SignInSettings:
    """How the function signs in to Entra ID: POWERBI_AUTH_MODE and the credentials that mode uses."""

    mode: AuthMode
    tenant_id: str
    client_id: str
    authority_host: str
    cloud: str = "Public"
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: Certificate | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    profile_id: str | None = None
    # POWERBI_CLIENT_ASSERTION=managed_identity: the client proves who it is with the user-assigned
    # identity's token for the cloud's token-exchange audience (a federated identity credential).
    client_assertion: Literal["managed_identity"] | None = None
    # The platform's secret for its managed identity endpoint (not a setting): kept only to redact it.
    identity_header: str | None = field(default=None, repr=False)

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def client_type(self) -> Literal["confidential", "public", "managedIdentity"]:
        if self.mode == "ManagedIdentity":
            return "managedIdentity"
        return "confidential" if self.client_secret or self.client_certificate or self.client_assertion else "public"

    @property
    def federated_audience(self) -> str:
        """What the managed identity's token must be for to serve as the client assertion."""
        return CLOUDS[self.cloud].federated_audience


@dataclass(frozen=True)
class PowerBISettings:
    """Where Power BI answers and the scope its tokens are for: POWERBI_API_URL, POWERBI_SCOPE."""

    api_url: str
    scope: str

    @property
    def resource(self) -> str:
        """The scope as a resource, for managed identity (which takes no scopes)."""
        return self.scope.removesuffix("/.default")


@dataclass(frozen=True)
class PolicySettings:
    """What may be embedded, how, and what an answer says: allow-lists, token minutes, deadline, errors."""

    allowed_workspaces: frozenset[str]
    workspace_id: str | None = None
    allowed_reports: frozenset[str] | None = None
    allowed_dashboards: frozenset[str] | None = None
    allow_edit: bool = False
    token_lifetime_minutes: int | None = None
    min_token_minutes: int = 10
    deadline_seconds: float = 20.0
    error_details: bool = False  # detailed messages in error answers (see error_details())
    http_auth_level: str = "function"


@dataclass(frozen=True)
class RowLevelSecuritySettings:
    """Row-level security: whose principal is believed, and the identity's username, roles and custom data."""

    username_source: Literal["none", "principal"] = "none"
    username_claim: str | None = None
    roles: tuple[str, ...] = ()
    custom_data_claim: str | None = None
    identity_provider: str = "aad"
    allowed_tenants: frozenset[str] | None = None
    roles_source: Literal["setting", "principal"] = "setting"
    allowed_roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CacheSettings:
    """The in-process caches: the workspace catalog's life, how often an unknown id may re-read it, tokens kept."""

    catalog_ttl_seconds: float = 600.0
    catalog_refresh_seconds: float = 60.0
    max_tokens: int = 10_000


TelemetryMode = Literal["off", "otlp", "azure_monitor", "worker"]
TELEMETRY_SERVICE_NAME = "powerbi-embed"


@dataclass(frozen=True)
class TelemetrySettings:
    """Where telemetry goes (``shared.telemetry``): the platform's and OpenTelemetry's own setting names."""

    mode: TelemetryMode = "off"
    connection_string: str = field(default="", repr=False)  # holds the instrumentation key
    otlp_endpoint: str = field(default="", repr=False)
    service_name: str = TELEMETRY_SERVICE_NAME
    # The OTLP exporters' timeout: None when OTEL_EXPORTER_OTLP_TIMEOUT is set (the SDK reads it), else a
    # short one: an export not finished by then is given up (the batch dropped, the next one tried).
    export_timeout_seconds: float | None = 5.0
    # Exemplars (a span id on a measurement) cost every measurement a context lookup: on only when
    # OTEL_METRICS_EXEMPLAR_FILTER asks for them (the SDK reads it).
    exemplars: bool = False


@dataclass(frozen=True)
class RefreshSettings:
    """Refreshing ahead and serving what is still valid (issue 17): POWERBI_REFRESH_AHEAD_MINUTES,
    POWERBI_CATALOG_STALE_SECONDS."""

    ahead_minutes: int = 10  # re-mint a token in the background this long before it stops being handed out
    catalog_stale_seconds: float = 86_400.0  # a catalog kept past its TTL for transient faults


@dataclass(frozen=True)
class BudgetSettings:
    """New embed tokens a minute: POWERBI_MAX_NEW_TOKENS_PER_MINUTE, POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE."""

    per_minute: int = 300
    per_user_per_minute: int = 20
    # App Service Authentication runs (WEBSITE_AUTH_ENABLED=True): it sets the principal headers and drops
    # any a caller sends, so the principal id may key the per-user budget.
    platform_signs_in: bool = False


@dataclass(frozen=True)
class Settings:
    """Every setting, by concern; built only by ``from_env``, which reports every problem at once."""

    sign_in: SignInSettings
    powerbi: PowerBISettings
    policy: PolicySettings
    rls: RowLevelSecuritySettings
    caches: CacheSettings
    shared_cache: SharedCacheSettings | None = None
    # Many customers (shared.customers.config); None: POWERBI_CUSTOMERS_SOURCE=none, one global scope.
    customers: CustomersSettings | None = None
    refresh: RefreshSettings = RefreshSettings()
    budget: BudgetSettings = BudgetSettings()
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        # The customers concern lives with the customers (it holds their directory), which import this module.
        from shared.customers.config import read_customers

        reader = Reader(env)
        sign_in = read_sign_in(reader)
        customers = read_customers(reader)
        settings = cls(
            sign_in=sign_in,
            powerbi=read_powerbi(reader, CLOUDS[sign_in.cloud]),
            policy=read_policy(reader, per_customer=customers is not None),
            rls=read_row_level_security(reader),
            caches=read_caches(reader),
            shared_cache=read_shared_cache(reader),
            customers=customers,
            refresh=read_refresh(reader),
            budget=read_budget(reader),
            telemetry=read_telemetry(reader),
        )
        reader.raise_problems()
        return settings


def http_auth_level(env: Mapping[str, str]) -> str:
    """POWERBI_HTTP_AUTH_LEVEL, read at import time because routes need it then.

    An unknown value falls back to ``function``: deny rather than open the door.
    ``Settings`` reports the bad value as a configuration error too.
    """
    return _http_auth_level(Reader(env))


def error_details(env: Mapping[str, str]) -> bool:
    """Whether error answers carry the detailed message: POWERBI_ERROR_DETAILS=true|false, else on only
    in Development (Core Tools sets AZURE_FUNCTIONS_ENVIRONMENT=Development). Anything else: off.

    A plain function too, because an answer for settings that cannot be read needs it.
    """
    return _error_details(Reader(env))


def telemetry_settings(env: Mapping[str, str]) -> TelemetrySettings:
    """The telemetry concern alone, read at import time (telemetry starts with the process)."""
    reader = Reader(env)
    settings = read_telemetry(reader)
    reader.raise_problems()
    return settings


def ignored_settings(env: Mapping[str, str]) -> frozenset[str]:
    """The settings the chosen POWERBI_AUTH_MODE never reads (the doctor only warns about them)."""
    return _UNUSED_BY_MODE[_auth_mode(Reader(env))]


class Reader:
    """The one place that reads the environment; collects every problem before failing, so one look
    at /api/health fixes them all. Values are trimmed, except secrets, which are used as they are."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigurationError(
                "The function is not configured correctly: " + "; ".join(self.problems) + ".",
                problems=tuple(self.problems),
            )

    def is_set(self, name: str) -> bool:
        return bool((self._env.get(name) or "").strip())

    def _usable(self, name: str, value: str, required: bool) -> bool:
        if KEY_VAULT_REFERENCE.match(value):
            self.problem(
                f"{name} is a Key Vault reference the platform could not resolve: check that the "
                "function app's managed identity is enabled and may read the secret (role 'Key Vault "
                "Secrets User') and that the secret exists; locally, sign in with `az login` so Core "
                "Tools can resolve it"
            )
            return False
        if not value.strip():
            if required:
                self.problem(f"{name} is required")
            return False
        return True

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = (self._env.get(name) or "").strip()
        return value if self._usable(name, value, required) else default

    def secret(self, name: str, *, required: bool = False) -> str | None:
        """A secret exactly as set: a password may begin or end with a space."""
        value = self._env.get(name) or ""
        return value if self._usable(name, value, required) else None

    def choice(self, name: str, default: str, allowed: tuple[str, ...], *, fold_case: bool = False) -> str:
        value = self.text(name, default) or default
        value = value.lower() if fold_case else value
        if value in allowed:
            return value
        choices = f"{allowed[0]} or {allowed[1]}" if len(allowed) == 2 else f"one of {', '.join(allowed)}"
        self.problem(f"{name} must be {choices}")
        return default

    def names(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of names (roles)."""
        return tuple(part.strip() for part in (self.text(name) or "").split(",") if part.strip())

    def guid(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is None:
            return None
        canonical = parse_guid(value)
        if canonical is None:
            self.problem(f"{name} must be a GUID")
        return canonical

    def guids(self, name: str) -> frozenset[str] | None:
        value = self.text(name)
        if value is None:
            return None
        items = [part.strip() for part in value.split(",") if part.strip()]
        parsed = {parse_guid(item) for item in items}
        if None in parsed or not items:
            self.problem(f"{name} must be a comma-separated list of GUIDs")
        return frozenset(p for p in parsed if p)

    def number(self, name: str, default: float | None, low: float, high: float, kind: type = float) -> float | None:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(kind(value))
        except ValueError:
            number = float("nan")
        if not low <= number <= high:  # also false for NaN
            noun = "a whole number" if kind is int else "a number"
            self.problem(f"{name} must be {noun} from {low:g} to {high:g}")
            return default
        return number

    def https_url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query:
            self.problem(f"{name} must be an https URL with a host and no path")
        return value.rstrip("/")


# --- Sign-in ---------------------------------------------------------------------------------


def _auth_mode(r: Reader) -> AuthMode:
    return r.choice("POWERBI_AUTH_MODE", "MasterUser", AUTH_MODES)  # type: ignore[return-value]  # one of AUTH_MODES


def read_sign_in(r: Reader) -> SignInSettings:
    """POWERBI_AUTH_MODE and what it uses; a setting the mode does not use is not read at all."""
    mode = _auth_mode(r)
    cloud = r.choice("POWERBI_CLOUD", "Public", tuple(CLOUDS))
    tenant = _tenant(r, mode)
    client_id = r.guid("POWERBI_CLIENT_ID", required=mode != "ManagedIdentity")
    assertion = _client_assertion(r) if mode != "ManagedIdentity" else None
    secret, certificate = _client_credential(r, mode, assertion) if mode != "ManagedIdentity" else (None, None)
    master_user = mode == "MasterUser"
    return SignInSettings(
        mode=mode,
        tenant_id=tenant or "",
        client_id=client_id or "",
        authority_host=r.https_url("POWERBI_AUTHORITY_HOST", CLOUDS[cloud].authority_host),
        cloud=cloud,
        client_secret=secret,
        client_certificate=certificate,
        username=r.text("POWERBI_USERNAME", required=True) if master_user else None,
        password=r.secret("POWERBI_PASSWORD", required=True) if master_user else None,
        managed_identity_client_id=r.guid("POWERBI_MANAGED_IDENTITY_CLIENT_ID"),
        profile_id=r.guid("POWERBI_PROFILE_ID"),
        client_assertion=assertion,
        identity_header=r.secret("IDENTITY_HEADER") if mode == "ManagedIdentity" or assertion else None,
    )


def _tenant(r: Reader, mode: str) -> str | None:
    """POWERBI_TENANT_ID: a master user may sign in through ``organizations``; client credentials may not."""
    master_user = mode == "MasterUser"
    tenant = r.text("POWERBI_TENANT_ID", "organizations" if master_user else None)
    if tenant and not _TENANT.match(tenant):
        r.problem("POWERBI_TENANT_ID must be a tenant id (GUID) or domain name")
    if mode == "ServicePrincipal" and not tenant:
        r.problem("POWERBI_TENANT_ID is required for a service principal")
    elif not master_user and tenant and tenant.lower() in _MULTI_TENANT_ALIASES:
        # Entra ID refuses client credentials at /common, /organizations and /consumers: they
        # name no tenant to issue the token in. A managed identity needs no tenant, but one of
        # these aliases says the setting was copied from a master user's and means nothing.
        r.problem(
            f"POWERBI_TENANT_ID must name the tenant (its id or domain) for {mode}, not "
            "organizations, common or consumers"
        )
    return tenant


def _client_assertion(r: Reader) -> Literal["managed_identity"] | None:
    """POWERBI_CLIENT_ASSERTION=managed_identity, which needs the trusted identity's client id."""
    if not r.is_set("POWERBI_CLIENT_ASSERTION"):
        return None
    if (
        r.choice("POWERBI_CLIENT_ASSERTION", "", (MANAGED_IDENTITY_ASSERTION,), fold_case=True)
        != MANAGED_IDENTITY_ASSERTION
    ):
        return None
    if not r.is_set("POWERBI_MANAGED_IDENTITY_CLIENT_ID"):
        r.problem(
            "POWERBI_CLIENT_ASSERTION=managed_identity needs POWERBI_MANAGED_IDENTITY_CLIENT_ID: the client id of "
            "the user-assigned managed identity the app registration trusts"
        )
    return "managed_identity"


def _client_credential(r: Reader, mode: str, assertion: str | None) -> tuple[str | None, Certificate | None]:
    """POWERBI_CLIENT_SECRET or a client certificate: required for a service principal, unless it signs in
    with a managed identity's token (POWERBI_CLIENT_ASSERTION); one of the three at most."""
    secret = r.secret("POWERBI_CLIENT_SECRET")
    certificate = _certificate(r)
    if mode == "ServicePrincipal" and not (secret or certificate or assertion):
        r.problem(
            "POWERBI_CLIENT_SECRET, POWERBI_CLIENT_CERTIFICATE(_PATH) or POWERBI_CLIENT_ASSERTION is required for "
            "a service principal"
        )
    if secret and certificate:
        r.problem("set POWERBI_CLIENT_SECRET or a client certificate, not both")
    if assertion and (secret or certificate):
        given = "POWERBI_CLIENT_SECRET" if secret else "the client certificate (POWERBI_CLIENT_CERTIFICATE(_PATH))"
        r.problem(f"set POWERBI_CLIENT_ASSERTION=managed_identity or {given}, not both")
    return secret, certificate


def _certificate(r: Reader) -> Certificate | None:
    """POWERBI_CLIENT_CERTIFICATE (the PEM itself, e.g. from Key Vault) or ..._PATH (a PEM file)."""
    pem = r.secret("POWERBI_CLIENT_CERTIFICATE")
    path = r.text("POWERBI_CLIENT_CERTIFICATE_PATH")
    if pem and path:
        r.problem("set POWERBI_CLIENT_CERTIFICATE or POWERBI_CLIENT_CERTIFICATE_PATH, not both")
        return None
    name = "POWERBI_CLIENT_CERTIFICATE" if pem else "POWERBI_CLIENT_CERTIFICATE_PATH"
    if path:
        try:
            pem = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            r.problem(f"{name} names a file that cannot be read")
            return None
    if not pem:
        return None
    pem = pem.replace("\\n", "\n")  # app settings often carry a PEM on one line
    certificate, key = _PEM_CERTIFICATE.search(pem), _PEM_KEY.search(pem)
    if not (certificate and key):
        r.problem(
            f"{name} must be a PEM holding the certificate and its unencrypted private key "
            "(in Key Vault, give the certificate the content type PEM)"
        )
        return None
    return Certificate(key.group(0), certificate.group(0))


# --- Power BI ---------------------------------------------------------------------------------


def read_powerbi(r: Reader, cloud: Cloud) -> PowerBISettings:
    return PowerBISettings(
        api_url=r.https_url("POWERBI_API_URL", cloud.api_url),
        scope=r.text("POWERBI_SCOPE") or f"{cloud.resource}/.default",
    )


# --- Policy -----------------------------------------------------------------------------------


def read_policy(r: Reader, *, per_customer: bool = False) -> PolicySettings:
    """The allow-lists, edit rights, token minutes, the request deadline and what answers disclose.

    ``per_customer``: a customer directory brings each customer's workspaces (the global ones must be unset)."""
    workspace_id = r.guid("POWERBI_WORKSPACE_ID")
    allowed = r.guids("POWERBI_ALLOWED_WORKSPACES")
    if per_customer:
        allowed = frozenset()
    elif allowed is None:
        allowed = frozenset([workspace_id]) if workspace_id else frozenset()
        if not r.is_set("POWERBI_WORKSPACE_ID"):
            r.problem(
                "POWERBI_WORKSPACE_ID (or POWERBI_ALLOWED_WORKSPACES) is required: no workspace is allowed without it"
            )
    elif workspace_id and workspace_id not in allowed:
        r.problem("POWERBI_WORKSPACE_ID must be one of POWERBI_ALLOWED_WORKSPACES")
    lifetime, minimum = _token_minutes(r)
    return PolicySettings(
        allowed_workspaces=allowed,
        workspace_id=workspace_id,
        allowed_reports=r.guids("POWERBI_ALLOWED_REPORTS"),
        allowed_dashboards=r.guids("POWERBI_ALLOWED_DASHBOARDS"),
        allow_edit=r.choice("POWERBI_ALLOW_EDIT", "false", ("true", "false"), fold_case=True) == "true",
        token_lifetime_minutes=lifetime,
        min_token_minutes=minimum,
        deadline_seconds=r.number("POWERBI_REQUEST_DEADLINE_SECONDS", 20.0, 1, 230) or 20.0,
        error_details=_error_details(r, report=True),
        http_auth_level=_http_auth_level(r),
    )


def _token_minutes(r: Reader) -> tuple[int | None, int]:
    """POWERBI_TOKEN_LIFETIME_MINUTES and POWERBI_MIN_TOKEN_MINUTES, which must leave a token reusable."""
    # Entra tokens live 60 to 90 minutes and an embed token never outlives the Entra token it
    # came from: a minimum above 30 leaves so little reuse that nearly every request signs in again.
    minimum = int(r.number("POWERBI_MIN_TOKEN_MINUTES", 10, 0, MAX_MIN_TOKEN_MINUTES, int) or 0)
    lifetime = r.number("POWERBI_TOKEN_LIFETIME_MINUTES", None, 1, MAX_TOKEN_LIFETIME_MINUTES, int)
    if lifetime is not None and lifetime <= minimum:
        # Every new token would already be too short to hand out.
        r.problem("POWERBI_TOKEN_LIFETIME_MINUTES must be greater than POWERBI_MIN_TOKEN_MINUTES")
    return (None if lifetime is None else int(lifetime)), minimum


def _http_auth_level(r: Reader) -> str:
    return r.choice("POWERBI_HTTP_AUTH_LEVEL", "function", HTTP_AUTH_LEVELS, fold_case=True)


def _error_details(r: Reader, *, report: bool = False) -> bool:
    value = (r.text("POWERBI_ERROR_DETAILS") or "").lower()
    if value in ("true", "false"):
        return value == "true"
    if value and report:
        r.problem("POWERBI_ERROR_DETAILS must be true or false")
    return (r.text("AZURE_FUNCTIONS_ENVIRONMENT") or "").lower() == "development"


# --- Row-level security -----------------------------------------------------------------------


def read_row_level_security(r: Reader) -> RowLevelSecuritySettings:
    """POWERBI_RLS_*: the identity Power BI filters by, and which signed-in principals are believed."""
    source = r.choice("POWERBI_RLS_USERNAME_SOURCE", "none", ("none", "principal"), fold_case=True)
    if source == "principal" and (r.text("WEBSITE_AUTH_ENABLED") or "").lower() != "true":
        # The principal headers can be trusted only when App Service Authentication sets them
        # (it drops any a caller sends); without it, anyone could claim any identity.
        r.problem(
            "POWERBI_RLS_USERNAME_SOURCE=principal needs App Service Authentication: turn it on for the "
            "function app, or link the function app to a Static Web App, which turns it on (either sets "
            "WEBSITE_AUTH_ENABLED=True)"
        )
    roles = r.names("POWERBI_RLS_ROLES")
    # Power BI's rules for roles, checked here so a bad list names the setting, not a Power BI error.
    if len(roles) > 50 or any(len(role) > 50 for role in roles):
        r.problem("POWERBI_RLS_ROLES may list at most 50 roles of at most 50 characters each")
    provider = (r.text("POWERBI_RLS_IDENTITY_PROVIDER", "aad") or "aad").lower()
    if not re.fullmatch(r"[a-z0-9_.-]+", provider):
        r.problem("POWERBI_RLS_IDENTITY_PROVIDER must be one identity provider name, such as aad")
    roles_source, allowed_roles = _roles_from_principal(r, source)
    return RowLevelSecuritySettings(
        username_source=source,  # type: ignore[arg-type]  # one of the two choices
        username_claim=r.text("POWERBI_RLS_USERNAME_CLAIM"),
        roles=roles,
        custom_data_claim=r.text("POWERBI_RLS_CUSTOM_DATA_CLAIM"),
        identity_provider=provider,
        allowed_tenants=r.guids("POWERBI_RLS_ALLOWED_TENANTS"),
        roles_source=roles_source,  # type: ignore[arg-type]  # one of the two choices
        allowed_roles=allowed_roles,
    )


def _roles_from_principal(r: Reader, username_source: str) -> tuple[str, frozenset[str]]:
    """POWERBI_RLS_ROLES_SOURCE and POWERBI_RLS_ALLOWED_ROLES: roles from the principal, allow-listed."""
    roles_source = r.choice("POWERBI_RLS_ROLES_SOURCE", "setting", ("setting", "principal"), fold_case=True)
    allowed_roles = frozenset(r.names("POWERBI_RLS_ALLOWED_ROLES"))
    if any(len(role) > 50 for role in allowed_roles):
        r.problem("POWERBI_RLS_ALLOWED_ROLES may list only roles of at most 50 characters")
    if roles_source == "principal":
        if not allowed_roles:
            # Without an allow-list, whoever manages the identity provider's roles would choose
            # which dataset roles a user gets: deny until the roles are listed.
            r.problem("POWERBI_RLS_ALLOWED_ROLES is required with POWERBI_RLS_ROLES_SOURCE=principal")
        if r.is_set("POWERBI_RLS_ROLES"):
            r.problem("set POWERBI_RLS_ROLES or POWERBI_RLS_ROLES_SOURCE=principal, not both")
        if username_source != "principal":
            r.problem("POWERBI_RLS_ROLES_SOURCE=principal needs POWERBI_RLS_USERNAME_SOURCE=principal")
    return roles_source, allowed_roles


# --- Refresh ahead and stale values; the new-token budget ---------------------------------------


def read_refresh(r: Reader) -> RefreshSettings:
    ahead = r.number("POWERBI_REFRESH_AHEAD_MINUTES", 10, 0, 30, int)
    stale = r.number("POWERBI_CATALOG_STALE_SECONDS", 86_400, 0, 7 * 86_400, int)
    return RefreshSettings(int(10 if ahead is None else ahead), float(86_400 if stale is None else stale))


def read_budget(r: Reader) -> BudgetSettings:
    per_minute = r.number("POWERBI_MAX_NEW_TOKENS_PER_MINUTE", 300, 1, 100_000, int)
    per_user = r.number("POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE", 20, 1, 100_000, int)
    return BudgetSettings(
        int(300 if per_minute is None else per_minute),
        int(20 if per_user is None else per_user),
        (r.text("WEBSITE_AUTH_ENABLED") or "").lower() == "true",
    )


# --- Caches -----------------------------------------------------------------------------------


def read_caches(r: Reader) -> CacheSettings:
    ttl = r.number("POWERBI_CATALOG_TTL_SECONDS", 600, 1, 24 * 3600)
    refresh = r.number("POWERBI_CATALOG_REFRESH_SECONDS", 60, 0, 24 * 3600)
    max_tokens = r.number("POWERBI_CACHE_MAX_TOKENS", 10_000, 1, 10_000_000, int)
    return CacheSettings(
        catalog_ttl_seconds=float(600 if ttl is None else ttl),
        catalog_refresh_seconds=float(60 if refresh is None else refresh),
        max_tokens=int(10_000 if max_tokens is None else max_tokens),
    )


def read_shared_cache(r: Reader) -> SharedCacheSettings | None:
    """POWERBI_CACHE_URL, _ENCRYPTION_KEY, _TIMEOUT_MS, _BREAKER_SECONDS; unset URL: no shared cache."""
    # A URL and a base64 key have no meaningful outer spaces: trimmed like other values.
    url = r.text("POWERBI_CACHE_URL")
    raw_key = r.text("POWERBI_CACHE_ENCRYPTION_KEY")
    timeout_ms = r.number("POWERBI_CACHE_TIMEOUT_MS", 100, 10, 5000, int) or 100
    breaker = r.number("POWERBI_CACHE_BREAKER_SECONDS", 30, 0, 3600, int)
    if url is None:
        return None
    if not _is_redis_url(url):
        r.problem("POWERBI_CACHE_URL must be redis:// or rediss://host:port[/db]")
    if raw_key is None:
        r.problem("POWERBI_CACHE_ENCRYPTION_KEY is required when POWERBI_CACHE_URL is set")
        return None
    try:
        key: bytes | None = base64.b64decode(raw_key, validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != 32:
        r.problem(
            "POWERBI_CACHE_ENCRYPTION_KEY must be 32 random bytes in base64 (44 characters), e.g. from "
            'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'
        )
        return None
    return SharedCacheSettings(url, key, timeout_ms / 1000, breaker or 0.0)


def _is_redis_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    return (
        parts.scheme in ("redis", "rediss")
        and bool(parts.hostname)
        and port_ok
        and re.fullmatch(r"/?\d{0,2}", parts.path) is not None
        and not parts.query
        and not parts.fragment
    )


# --- Telemetry --------------------------------------------------------------------------------


def read_telemetry(r: Reader) -> TelemetrySettings:
    """APPLICATIONINSIGHTS_CONNECTION_STRING (and PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the worker
    configures the distro), else OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_SERVICE_NAME; neither: off."""
    connection = r.secret("APPLICATIONINSIGHTS_CONNECTION_STRING") or ""
    if connection and "instrumentationkey=" not in connection.lower():
        r.problem("APPLICATIONINSIGHTS_CONNECTION_STRING must be an Application Insights connection string")
    worker = r.choice("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "false", ("true", "false"), fold_case=True)
    endpoint = r.text("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.problem("OTEL_EXPORTER_OTLP_ENDPOINT must be an http or https URL")
    mode: TelemetryMode = "off"
    if connection:
        mode = "worker" if worker == "true" else "azure_monitor"
    elif endpoint:
        mode = "otlp"
    service = r.text("OTEL_SERVICE_NAME") or TELEMETRY_SERVICE_NAME
    timeout = None if r.is_set("OTEL_EXPORTER_OTLP_TIMEOUT") else 5.0
    exemplars = r.is_set("OTEL_METRICS_EXEMPLAR_FILTER")
    return TelemetrySettings(mode, connection.strip(), endpoint, service, timeout, exemplars)

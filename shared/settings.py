"""App settings: read once, validated once, named in every complaint, never echoed.

The setting names are the product's contract (static sites, deploy scripts and
acceptance tests depend on them). A problem is reported by the setting's name and
what is wrong with it; a value is never shown, since many are secrets.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
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
    ),
    "USGovDoD": Cloud(
        "https://login.microsoftonline.us",
        "https://api.mil.powerbigov.us",
        "https://mil.analysis.usgovcloudapi.net/powerbi/api",
    ),
    "China": Cloud(
        "https://login.chinacloudapi.cn", "https://api.powerbi.cn", "https://analysis.chinacloudapi.cn/powerbi/api"
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


def parse_guid(value: str) -> str | None:
    """The canonical (lower-case, hyphenated) form of a GUID, or None if it is not one."""
    try:
        parsed = uuid.UUID(value.strip())
    except ValueError:
        return None
    # uuid.UUID also accepts braces and urn: prefixes; ids in URLs are the plain form.
    canonical = str(parsed)
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
class Settings:
    auth_mode: AuthMode
    tenant_id: str
    client_id: str
    authority_host: str
    api_url: str
    scope: str
    allowed_workspaces: frozenset[str]
    workspace_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: Certificate | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    profile_id: str | None = None
    cloud: str = "Public"
    allowed_reports: frozenset[str] | None = None
    allowed_dashboards: frozenset[str] | None = None
    token_lifetime_minutes: int | None = None
    min_token_minutes: int = 10
    deadline_seconds: float = 20.0
    rls_username_source: Literal["none", "principal"] = "none"
    rls_username_claim: str | None = None
    rls_roles: tuple[str, ...] = ()
    rls_custom_data_claim: str | None = None
    allow_edit: bool = False
    # Row-level security: which principals are believed, and where roles come from.
    rls_identity_provider: str = "aad"
    rls_allowed_tenants: frozenset[str] | None = None
    rls_roles_source: Literal["setting", "principal"] = "setting"
    rls_allowed_roles: frozenset[str] = frozenset()
    # Caches: the workspace catalog's life, how often an unknown id may re-read it, embed tokens kept.
    catalog_ttl_seconds: float = 600.0
    catalog_refresh_seconds: float = 60.0
    cache_max_tokens: int = 10_000
    error_details: bool = False  # detailed messages in error answers (see error_details())
    shared_cache: SharedCacheSettings | None = None
    # Many customers (shared.customers.config); None: POWERBI_CUSTOMERS_SOURCE=none, one global scope.
    customers: CustomersSettings | None = None

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def resource(self) -> str:
        """The scope as a resource, for managed identity (which takes no scopes)."""
        return self.scope.removesuffix("/.default")

    @property
    def client_type(self) -> Literal["confidential", "public", "managedIdentity"]:
        if self.auth_mode == "ManagedIdentity":
            return "managedIdentity"
        return "confidential" if self.client_secret or self.client_certificate else "public"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return _Reader(env).settings()


def http_auth_level(env: Mapping[str, str]) -> str:
    """POWERBI_HTTP_AUTH_LEVEL, read at import time because routes need it then.

    An unknown value falls back to ``function``: deny rather than open the door.
    ``Settings`` reports the bad value as a configuration error too.
    """
    value = env.get("POWERBI_HTTP_AUTH_LEVEL", "").strip().lower()
    return value if value in HTTP_AUTH_LEVELS else "function"


def error_details(env: Mapping[str, str]) -> bool:
    """Whether error answers carry the detailed message: POWERBI_ERROR_DETAILS=true|false, else on only
    in Development (Core Tools sets AZURE_FUNCTIONS_ENVIRONMENT=Development). Anything else: off.

    A plain function too, because an answer for settings that cannot be read needs it.
    """
    value = (env.get("POWERBI_ERROR_DETAILS") or "").strip().lower()
    if value in ("true", "false"):
        return value == "true"
    return (env.get("AZURE_FUNCTIONS_ENVIRONMENT") or "").strip().lower() == "development"


class _Reader:
    """Collects every problem before failing, so one look at /api/health fixes them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = (self.env.get(name) or "").strip()
        if KEY_VAULT_REFERENCE.match(value):
            self.problems.append(
                f"{name} is a Key Vault reference the platform could not resolve: check that the "
                "function app's managed identity is enabled and may read the secret (role 'Key Vault "
                "Secrets User') and that the secret exists; locally, sign in with `az login` so Core "
                "Tools can resolve it"
            )
            return None
        if not value:
            if required:
                self.problems.append(f"{name} is required")
            return default
        return value

    def guid(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is None:
            return None
        canonical = parse_guid(value)
        if canonical is None:
            self.problems.append(f"{name} must be a GUID")
        return canonical

    def guids(self, name: str) -> frozenset[str] | None:
        value = self.text(name)
        if value is None:
            return None
        items = [part.strip() for part in value.split(",") if part.strip()]
        parsed = {parse_guid(item) for item in items}
        if None in parsed or not items:
            self.problems.append(f"{name} must be a comma-separated list of GUIDs")
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
            self.problems.append(f"{name} must be {noun} from {low:g} to {high:g}")
            return default
        return number

    def https_url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query:
            self.problems.append(f"{name} must be an https URL with a host and no path")
        return value.rstrip("/")

    def certificate(self) -> Certificate | None:
        """POWERBI_CLIENT_CERTIFICATE (the PEM itself, e.g. from Key Vault) or ..._PATH (a PEM file)."""
        pem = self.text("POWERBI_CLIENT_CERTIFICATE")
        path = self.text("POWERBI_CLIENT_CERTIFICATE_PATH")
        if pem and path:
            self.problems.append("set POWERBI_CLIENT_CERTIFICATE or POWERBI_CLIENT_CERTIFICATE_PATH, not both")
            return None
        name = "POWERBI_CLIENT_CERTIFICATE" if pem else "POWERBI_CLIENT_CERTIFICATE_PATH"
        if path:
            try:
                pem = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                self.problems.append(f"{name} names a file that cannot be read")
                return None
        if not pem:
            return None
        pem = pem.replace("\\n", "\n")  # app settings often carry a PEM on one line
        certificate, key = _PEM_CERTIFICATE.search(pem), _PEM_KEY.search(pem)
        if not (certificate and key):
            self.problems.append(
                f"{name} must be a PEM holding the certificate and its unencrypted private key "
                "(in Key Vault, give the certificate the content type PEM)"
            )
            return None
        return Certificate(key.group(0), certificate.group(0))

    def row_level_security(self) -> dict[str, Any]:
        source = (self.text("POWERBI_RLS_USERNAME_SOURCE", "none") or "none").lower()
        if source not in ("none", "principal"):
            self.problems.append("POWERBI_RLS_USERNAME_SOURCE must be none or principal")
            source = "none"
        if source == "principal" and (self.env.get("WEBSITE_AUTH_ENABLED") or "").strip().lower() != "true":
            # The principal headers can be trusted only when App Service Authentication sets them
            # (it drops any a caller sends); without it, anyone could claim any identity.
            self.problems.append(
                "POWERBI_RLS_USERNAME_SOURCE=principal needs App Service Authentication: turn it on for the "
                "function app, or link the function app to a Static Web App, which turns it on (either sets "
                "WEBSITE_AUTH_ENABLED=True)"
            )
        roles = tuple(r.strip() for r in (self.text("POWERBI_RLS_ROLES") or "").split(",") if r.strip())
        # Power BI's rules for roles, checked here so a bad list names the setting, not a Power BI error.
        if len(roles) > 50 or any(len(role) > 50 for role in roles):
            self.problems.append("POWERBI_RLS_ROLES may list at most 50 roles of at most 50 characters each")
        allow_edit = (self.text("POWERBI_ALLOW_EDIT", "false") or "false").lower()
        if allow_edit not in ("true", "false"):
            self.problems.append("POWERBI_ALLOW_EDIT must be true or false")
        return {
            "rls_username_source": source,
            "rls_username_claim": self.text("POWERBI_RLS_USERNAME_CLAIM"),
            "rls_roles": roles,
            "rls_custom_data_claim": self.text("POWERBI_RLS_CUSTOM_DATA_CLAIM"),
            "allow_edit": allow_edit == "true",
        }

    def tenant(self, mode: str) -> str | None:
        """POWERBI_TENANT_ID: a master user may sign in through ``organizations``; client credentials may not."""
        master_user = mode == "MasterUser"
        tenant = self.text("POWERBI_TENANT_ID", "organizations" if master_user else None)
        if tenant and not _TENANT.match(tenant):
            self.problems.append("POWERBI_TENANT_ID must be a tenant id (GUID) or domain name")
        if mode == "ServicePrincipal" and not tenant:
            self.problems.append("POWERBI_TENANT_ID is required for a service principal")
        elif not master_user and tenant and tenant.lower() in _MULTI_TENANT_ALIASES:
            # Entra ID refuses client credentials at /common, /organizations and /consumers: they
            # name no tenant to issue the token in. A managed identity needs no tenant, but one of
            # these aliases says the setting was copied from a master user's and means nothing.
            self.problems.append(
                f"POWERBI_TENANT_ID must name the tenant (its id or domain) for {mode}, not "
                "organizations, common or consumers"
            )
        return tenant

    def token_minutes(self) -> tuple[float | None, float]:
        """POWERBI_TOKEN_LIFETIME_MINUTES and POWERBI_MIN_TOKEN_MINUTES, which must leave a token reusable."""
        # Entra tokens live 60 to 90 minutes and an embed token never outlives the Entra token it
        # came from: a minimum above 30 leaves so little reuse that nearly every request signs in again.
        minimum = self.number("POWERBI_MIN_TOKEN_MINUTES", 10, 0, MAX_MIN_TOKEN_MINUTES, int) or 0
        lifetime = self.number("POWERBI_TOKEN_LIFETIME_MINUTES", None, 1, MAX_TOKEN_LIFETIME_MINUTES, int)
        if lifetime is not None and lifetime <= minimum:
            # Every new token would already be too short to hand out.
            self.problems.append("POWERBI_TOKEN_LIFETIME_MINUTES must be greater than POWERBI_MIN_TOKEN_MINUTES")
        return lifetime, minimum

    def rls_principal(self) -> dict[str, Any]:
        """Which signed-in principals row-level security believes, and where their roles come from."""
        provider = (self.text("POWERBI_RLS_IDENTITY_PROVIDER", "aad") or "aad").lower()
        if not re.fullmatch(r"[a-z0-9_.-]+", provider):
            self.problems.append("POWERBI_RLS_IDENTITY_PROVIDER must be one identity provider name, such as aad")
        roles_source = (self.text("POWERBI_RLS_ROLES_SOURCE", "setting") or "setting").lower()
        if roles_source not in ("setting", "principal"):
            self.problems.append("POWERBI_RLS_ROLES_SOURCE must be setting or principal")
            roles_source = "setting"
        allowed_roles = frozenset(
            r.strip() for r in (self.text("POWERBI_RLS_ALLOWED_ROLES") or "").split(",") if r.strip()
        )
        if any(len(role) > 50 for role in allowed_roles):
            self.problems.append("POWERBI_RLS_ALLOWED_ROLES may list only roles of at most 50 characters")
        if roles_source == "principal":
            if not allowed_roles:
                # Without an allow-list, whoever manages the identity provider's roles would choose
                # which dataset roles a user gets: deny until the roles are listed.
                self.problems.append("POWERBI_RLS_ALLOWED_ROLES is required with POWERBI_RLS_ROLES_SOURCE=principal")
            if (self.env.get("POWERBI_RLS_ROLES") or "").strip():
                self.problems.append("set POWERBI_RLS_ROLES or POWERBI_RLS_ROLES_SOURCE=principal, not both")
            if (self.env.get("POWERBI_RLS_USERNAME_SOURCE") or "").strip().lower() != "principal":
                self.problems.append("POWERBI_RLS_ROLES_SOURCE=principal needs POWERBI_RLS_USERNAME_SOURCE=principal")
        return {
            "rls_identity_provider": provider,
            "rls_allowed_tenants": self.guids("POWERBI_RLS_ALLOWED_TENANTS"),
            "rls_roles_source": roles_source,
            "rls_allowed_roles": allowed_roles,
        }

    def caches(self) -> dict[str, Any]:
        ttl = self.number("POWERBI_CATALOG_TTL_SECONDS", 600, 1, 24 * 3600)
        refresh = self.number("POWERBI_CATALOG_REFRESH_SECONDS", 60, 0, 24 * 3600)
        max_tokens = self.number("POWERBI_CACHE_MAX_TOKENS", 10_000, 1, 10_000_000, int)
        return {
            "catalog_ttl_seconds": float(600 if ttl is None else ttl),
            "catalog_refresh_seconds": float(60 if refresh is None else refresh),
            "cache_max_tokens": int(10_000 if max_tokens is None else max_tokens),
        }

    def error_answers(self) -> dict[str, Any]:
        value = (self.text("POWERBI_ERROR_DETAILS") or "").lower()
        if value not in ("", "true", "false"):
            self.problems.append("POWERBI_ERROR_DETAILS must be true or false")
        return {"error_details": error_details(self.env)}

    def shared_cache(self) -> dict[str, Any]:
        """POWERBI_CACHE_URL, _ENCRYPTION_KEY, _TIMEOUT_MS, _BREAKER_SECONDS; unset URL: no shared cache."""
        url = self.text("POWERBI_CACHE_URL")
        raw_key = self.text("POWERBI_CACHE_ENCRYPTION_KEY")
        timeout_ms = self.number("POWERBI_CACHE_TIMEOUT_MS", 100, 10, 5000, int) or 100
        breaker = self.number("POWERBI_CACHE_BREAKER_SECONDS", 30, 0, 3600, int)
        if url is None:
            return {}
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if (
            parts.scheme not in ("redis", "rediss")
            or not parts.hostname
            or not port_ok
            or not re.fullmatch(r"/?\d{0,2}", parts.path)
            or parts.query
            or parts.fragment
        ):
            self.problems.append("POWERBI_CACHE_URL must be redis:// or rediss://host:port[/db]")
        key = None
        if raw_key is None:
            self.problems.append("POWERBI_CACHE_ENCRYPTION_KEY is required when POWERBI_CACHE_URL is set")
        else:
            try:
                key = base64.b64decode(raw_key, validate=True)
            except (binascii.Error, ValueError):
                key = None
            if key is None or len(key) != 32:
                self.problems.append(
                    "POWERBI_CACHE_ENCRYPTION_KEY must be 32 random bytes in base64 (44 characters), e.g. from "
                    'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'
                )
                key = None
        if key is None:
            return {}
        return {"shared_cache": SharedCacheSettings(url, key, timeout_ms / 1000, breaker or 0.0)}

    def settings(self) -> Settings:
        env = self.env
        mode = self.text("POWERBI_AUTH_MODE", "MasterUser") or "MasterUser"
        if mode not in AUTH_MODES:
            self.problems.append(f"POWERBI_AUTH_MODE must be one of {', '.join(AUTH_MODES)}")
            mode = "MasterUser"
        master_user, service_principal = mode == "MasterUser", mode == "ServicePrincipal"
        raw_level = env.get("POWERBI_HTTP_AUTH_LEVEL", "").strip().lower()
        if raw_level and raw_level not in HTTP_AUTH_LEVELS:
            self.problems.append(f"POWERBI_HTTP_AUTH_LEVEL must be one of {', '.join(HTTP_AUTH_LEVELS)}")
        cloud_name = self.text("POWERBI_CLOUD", "Public") or "Public"
        if cloud_name not in CLOUDS:
            self.problems.append(f"POWERBI_CLOUD must be one of {', '.join(CLOUDS)}")
            cloud_name = "Public"
        cloud = CLOUDS[cloud_name]

        tenant = self.tenant(mode)
        client_id = self.guid("POWERBI_CLIENT_ID", required=mode != "ManagedIdentity")
        secret = self.text("POWERBI_CLIENT_SECRET")
        certificate = self.certificate()
        if service_principal and not (secret or certificate):
            self.problems.append(
                "POWERBI_CLIENT_SECRET or POWERBI_CLIENT_CERTIFICATE(_PATH) is required for a service principal"
            )
        if secret and certificate:
            self.problems.append("set POWERBI_CLIENT_SECRET or a client certificate, not both")
        username = self.text("POWERBI_USERNAME", required=master_user)
        password = self.text("POWERBI_PASSWORD", required=master_user)

        from shared.customers.config import read_customers  # imports shared.settings itself

        customers = read_customers(self)
        workspace_id = self.guid("POWERBI_WORKSPACE_ID")
        allowed = self.guids("POWERBI_ALLOWED_WORKSPACES")
        if customers is not None:
            allowed = frozenset()  # each customer brings its own (the global settings must be unset)
        elif allowed is None:
            allowed = frozenset([workspace_id]) if workspace_id else frozenset()
            if not (env.get("POWERBI_WORKSPACE_ID") or "").strip():
                self.problems.append(
                    "POWERBI_WORKSPACE_ID (or POWERBI_ALLOWED_WORKSPACES) is required: "
                    "no workspace is allowed without it"
                )
        elif workspace_id and workspace_id not in allowed:
            self.problems.append("POWERBI_WORKSPACE_ID must be one of POWERBI_ALLOWED_WORKSPACES")

        lifetime, minimum = self.token_minutes()

        settings = Settings(
            auth_mode=mode,  # type: ignore[arg-type]  # checked against AUTH_MODES above
            tenant_id=tenant or "",
            client_id=client_id or "",
            client_secret=secret if mode != "ManagedIdentity" else None,
            client_certificate=certificate if mode != "ManagedIdentity" else None,
            username=username if master_user else None,
            password=password if master_user else None,
            managed_identity_client_id=self.guid("POWERBI_MANAGED_IDENTITY_CLIENT_ID"),
            profile_id=self.guid("POWERBI_PROFILE_ID"),
            cloud=cloud_name,
            authority_host=self.https_url("POWERBI_AUTHORITY_HOST", cloud.authority_host),
            api_url=self.https_url("POWERBI_API_URL", cloud.api_url),
            scope=self.text("POWERBI_SCOPE") or f"{cloud.resource}/.default",
            workspace_id=workspace_id,
            allowed_workspaces=allowed,
            allowed_reports=self.guids("POWERBI_ALLOWED_REPORTS"),
            allowed_dashboards=self.guids("POWERBI_ALLOWED_DASHBOARDS"),
            token_lifetime_minutes=int(lifetime) if lifetime is not None else None,
            min_token_minutes=int(minimum),
            deadline_seconds=self.number("POWERBI_REQUEST_DEADLINE_SECONDS", 20.0, 1, 230) or 20.0,
            **self.row_level_security(),
            **self.rls_principal(),
            **self.caches(),
            **self.error_answers(),
            **self.shared_cache(),
            customers=customers,
        )
        if self.problems:
            raise ConfigurationError(
                "The function is not configured correctly: " + "; ".join(self.problems) + ".",
                problems=tuple(self.problems),
            )
        return settings

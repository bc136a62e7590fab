"""The embed service: who may have a token (policy), what it covers (catalog), and reuse (cache).

The flow of one request, top to bottom (``EmbedService.embed``):

1. policy (``_authorize``): ids, access level, workspace and item allow-lists, before any upstream call,
   so a denied request costs Power BI nothing;
2. plan (``_plan``): the items, their datasets and row-level-security flags from the workspace catalog
   (``shared.catalog``), and the effective identity for exactly the datasets that require one (Power BI
   refuses it for the others); a dataset that requires one while the function has none to give is a
   configuration error, not a Power BI error;
3. the token (``shared.tokens.EmbedTokens.get``): the canonical key (the set of items in any order and
   case, the access level, and the identity only when a dataset requires it) is looked up among the
   bounded cached tokens; on a miss, within the new-token budget, one GenerateToken is made, shared by
   concurrent requests for that key; a token near its end is re-minted in the background, and a token
   still valid stands in for a GenerateToken that fails for a transient fault.

Power BI is called with one ``Bearer`` per request: the Entra token is fetched only if something must be
read or minted, and replaced once if Power BI rejects it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

from shared import redact, telemetry
from shared.background import Background, BackgroundPool
from shared.budget import Budget
from shared.cache import SharedLevel
from shared.catalog import Catalog
from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.customers.access import CustomerAccess
from shared.customers.directory import Customer
from shared.entra import EntraTokenProvider
from shared.errors import ConfigurationError, InvalidRequest, NotAllowed
from shared.http import HttpClient, call_context
from shared.identity import Identity
from shared.powerbi import Bearer, Dataset, EffectiveIdentity, Item, PowerBIClient, TokenRequest
from shared.settings import Settings, parse_guid
from shared.shared_cache import SharedCache
from shared.tokens import ENTRA_MARGIN_SECONDS, Embed, EmbedTokens, Plan, TokenKey
from shared.tokens import Kind as Kind  # the routes and the doctor name it from here

logger = logging.getLogger(__name__)

MAX_REPORTS = 50  # Power BI's limit for one V2 token
# Entra access and refresh tokens the redaction registry keeps beside the embed tokens: MSAL holds one or
# two at a time; this leaves room for the ones just replaced.
ENTRA_TOKENS_HELD = 64


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """What a caller may have, once policy has allowed it."""

    kind: Kind
    workspace_id: str
    ids: tuple[str, ...]  # report ids (request order, no repeats); (dashboard,); (dashboard, tile); (dataset,)
    access_level: str = "View"
    identity: Identity | None = None
    profile_id: str | None = None  # the service principal profile every Power BI call is made as
    customer: str | None = None  # the customer's id (many customers), for the log


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a request may reach: the customer's workspaces, items and profile, or the global settings'."""

    default_workspace: str | None
    workspaces: frozenset[str]
    reports: frozenset[str] | None
    dashboards: frozenset[str] | None
    profile_id: str | None

    @classmethod
    def of(cls, customer: Customer) -> _Scope:
        workspaces = frozenset(customer.workspaces)
        return cls(customer.default_workspace, workspaces, customer.reports, customer.dashboards, customer.profile_id)

    @classmethod
    def of_settings(cls, s: Settings) -> _Scope:
        p = s.policy
        return cls(p.workspace_id, p.allowed_workspaces, p.allowed_reports, p.allowed_dashboards, s.sign_in.profile_id)


class EmbedService:
    def __init__(
        self,
        settings: Settings,
        tokens: EntraTokenProvider,
        powerbi: PowerBIClient,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedLevel | None = None,
        background: Background | None = None,
        budget: Budget | None = None,
        customers: CustomerAccess | None = None,
    ) -> None:
        """``shared``: an optional second cache level shared between workers, for tokens and the catalog;
        ``background``: where refreshes ahead run (none without it); ``budget``: for new tokens (this
        process's own without one); ``customers``: the customer directory's access rule (None: one global
        scope, POWERBI_CUSTOMERS_SOURCE=none)."""
        self.settings = settings
        self.customers = customers
        self.tokens = tokens
        self.powerbi = powerbi
        self.clock = clock
        self._min_seconds = settings.policy.min_token_minutes * 60
        self.budget = budget or Budget(settings.budget.per_minute, settings.budget.per_user_per_minute, clock)
        self.catalog = Catalog(
            powerbi,
            settings.caches.catalog_ttl_seconds,
            settings.caches.catalog_refresh_seconds,
            clock=clock,
            shared=shared,
            background=background,
            ahead_seconds=settings.refresh.ahead_minutes * 60,
            stale_seconds=settings.refresh.catalog_stale_seconds,
        )
        # Every token the cache holds stays known to the log redaction, with room for the Entra tokens.
        redact.hold_tokens(settings.caches.max_tokens + ENTRA_TOKENS_HELD)
        self.embed_tokens = EmbedTokens(settings, powerbi, clock, shared, background, self.budget)
        telemetry.watch_cache("tokens", lambda: len(self.embed_tokens.cache))
        telemetry.watch_cache("catalog", lambda: len(self.catalog))

    @classmethod
    def create(
        cls,
        settings: Settings,
        clock: Clock = SYSTEM_CLOCK,
        session: requests.Session | None = None,
        shared: SharedLevel | None = None,
        background: Background | None = None,
    ) -> EmbedService:
        """The service with its collaborators: one HTTP session, one MSAL application, a small pool for the
        refreshes ahead. Without ``shared``, the shared cache of POWERBI_CACHE_URL (Redis) when it is set,
        which then also keeps the new-token budget for the fleet.
        """
        redis = SharedCache.create(settings, clock) if shared is None else None
        budget = Budget(settings.budget.per_minute, settings.budget.per_user_per_minute, clock, redis)
        http = HttpClient(session, clock)
        return cls(
            settings,
            EntraTokenProvider(settings, http, clock),
            PowerBIClient(
                settings.powerbi.api_url, http, settings.policy.token_lifetime_minutes, settings.sign_in.profile_id
            ),
            clock,
            shared or redis,
            background or BackgroundPool(),
            budget,
            CustomerAccess.create(settings, clock),
        )

    def customer_for(self, headers: Mapping[str, str]) -> Customer | None:
        """The signed-in user's customer (401/403 before any Power BI call), or None without a directory."""
        return self.customers.customer_for(headers) if self.customers is not None else None

    def embed(
        self,
        kind: Kind,
        ids: str | Sequence[str],
        workspace_id: str | None = None,
        access_level: str | None = None,
        identity: Identity | None = None,
        principal: str | None = None,
        customer: Customer | None = None,
    ) -> Embed:
        """The embed for a request; ``principal``: the signed-in user's id the platform vouches for (the
        per-user budget), if any; ``customer``: whose request it is (required with a customer directory)."""
        raw_ids = (ids,) if isinstance(ids, str) else tuple(ids)
        telemetry.annotate(kind=kind)
        request = self._authorize(kind, raw_ids, workspace_id, access_level, identity, customer)
        telemetry.annotate(workspace_id=request.workspace_id, item_ids=request.ids, customer=request.customer)
        with call_context(Deadline.after(self.clock, self.settings.policy.deadline_seconds)) as context:
            bearer = Bearer(self.tokens, self._min_seconds + ENTRA_MARGIN_SECONDS, request.profile_id)
            plan = self._plan(request, bearer)
            embed, outcome = self.embed_tokens.get(plan, bearer, principal, context.deadline.remaining)
            # A value from the shared store (l2) is a hit too: Power BI was not asked.
            telemetry.annotate(cache="hit" if outcome == "l2" else outcome, rls=plan.key.identity is not None)
            telemetry.token_handed_out(kind, embed.token.expires_at - self.clock.now())
            logger.info(
                "embed %s %s customer=%s workspace=%s access=%s rls=%s cache=%s upstream_calls=%d upstream_ms=%.0f "
                "request_ids=%s token_id=%s",
                kind,
                ",".join(request.ids),
                request.customer or "-",
                request.workspace_id,
                request.access_level,
                "yes" if plan.key.identity else "no",
                outcome,
                context.upstream_calls,
                context.upstream_seconds * 1000,
                ",".join(context.request_ids) or "-",
                embed.token.token_id,
            )
        if kind == "reports":  # the items in the order asked for; the token is the same for any order
            by_id = {item.id: item for item in embed.items}
            embed = dataclasses.replace(embed, items=tuple(by_id[i] for i in request.ids))
        return embed

    def _authorize(
        self,
        kind: Kind,
        raw_ids: tuple[str, ...],
        workspace_id: str | None,
        access_level: str | None,
        identity: Identity | None,
        customer: Customer | None = None,
    ) -> EmbedRequest:
        """Deny before any upstream call: bad ids and values, workspaces, items and access not allowed.

        With a customer directory the customer's workspaces, items and profile replace the global ones."""
        s = self.settings
        scope = _Scope.of(customer) if customer is not None else _Scope.of_settings(s)
        if customer is None and self.customers is not None:
            raise ConfigurationError("The request has no customer.", cause="embed called without the customer")
        names = {"tile": ("dashboard", "tile"), "create": ("dataset",)}.get(kind, (kind.removesuffix("s"),))
        ids: list[str] = []
        for position, raw in enumerate(raw_ids):
            parsed = parse_guid(raw)
            if parsed is None:
                name = names[min(position, len(names) - 1)]
                where = f" (the {_ordinal(position + 1)} of ids)" if kind == "reports" else ""
                raise InvalidRequest(f"The {name} id {_quoted(raw)}{where} is not a GUID.")
            if kind != "reports" or parsed not in ids:  # the same report twice is one report
                ids.append(parsed)
        if kind == "reports" and not 1 <= len(ids) <= MAX_REPORTS:
            raise InvalidRequest(
                f"ids must list from 1 to {MAX_REPORTS} report ids, separated by commas (it lists {len(ids)})."
            )
        level = (access_level or "View").capitalize()
        if level not in ("View", "Edit"):
            raise InvalidRequest(f"accessLevel must be View or Edit, not {_quoted(access_level or '')}.")
        if level == "Edit" and kind not in ("report", "reports"):
            raise InvalidRequest("Only reports can be edited: accessLevel=Edit needs a report.")
        workspace = scope.default_workspace if workspace_id is None else parse_guid(workspace_id)
        if workspace is None:
            raise InvalidRequest("workspaceId is required." if workspace_id is None else "workspaceId must be a GUID.")
        if workspace not in scope.workspaces:
            raise NotAllowed(f"Workspace {workspace} is not allowed here.")
        # Reports answer to the report allow-list; a dashboard and its tiles to the dashboard's; a
        # dataset to be reported on (create) only to its workspace's.
        allowed = scope.reports if kind in ("report", "reports") else scope.dashboards
        governed = [] if kind == "create" else ids if kind in ("report", "reports") else ids[:1]
        for item in governed:
            if allowed is not None and item not in allowed:
                raise NotAllowed(f"The {names[0]} {item} is not allowed here.")
        if (level == "Edit" or kind == "create") and not s.policy.allow_edit:
            raise NotAllowed(
                "Editing and creating reports is not allowed: ask for accessLevel=View.",
                hint="(POWERBI_ALLOW_EDIT is not true.)",
            )
        return EmbedRequest(
            kind, workspace, tuple(ids), level, identity, scope.profile_id, customer.id if customer else None
        )

    def _plan(self, request: EmbedRequest, bearer: Bearer) -> Plan:
        """Items, datasets and identity from the catalog (a 404 for an id it does not hold), and the key."""
        ws, ids, catalog = request.workspace_id, request.ids, self.catalog
        create_on: Dataset | None = None
        items: tuple[Item, ...] = ()
        models: dict[str, tuple[Dataset, ...]] = {}  # paginated report id -> its semantic models
        if request.kind == "create":
            create_on = catalog.dataset(bearer, ws, ids[0])
            behind = [create_on]
        else:
            if request.kind == "tile":
                items = (catalog.tile(bearer, ws, ids[0], ids[1]),)
            elif request.kind == "dashboard":
                items = (catalog.dashboard(bearer, ws, ids[0]),)
            else:
                items = tuple(catalog.report(bearer, ws, report_id) for report_id in sorted(ids))
                models = {i.id: found for i in items if (found := catalog.semantic_models(bearer, i))}
            pairs = sorted({d for item in items for d in item.datasets})
            behind = [catalog.dataset(bearer, dws, ds) for dws, ds in pairs]
            behind += [m for found in models.values() for m in found if m.id not in {d for _, d in pairs}]
        identity = self._identity(behind, models, request.identity)
        key_ids = tuple(sorted(ids)) if request.kind == "reports" else ids
        key_identity = request.identity if identity else None
        key = TokenKey(request.kind, ws, key_ids, request.access_level, key_identity, request.profile_id)
        read_only = tuple(sorted({m.id for found in models.values() for m in found}))
        token_request = TokenRequest(
            items, request.access_level == "Edit", create_on, (identity,) if identity else (), read_only
        )
        return Plan(key, token_request)

    def _identity(
        self, datasets: list[Dataset], models: dict[str, tuple[Dataset, ...]], identity: Identity | None
    ) -> EffectiveIdentity | None:
        """The effective identity, for exactly the datasets that require one (and the paginated reports on
        them), or None when none does."""
        needing = sorted({d.id: d for d in datasets if d.identity_required}.values(), key=lambda d: d.id)
        if not needing:
            return None
        names = ", ".join(d.id for d in needing)
        if identity is None:
            raise ConfigurationError(
                f"Dataset {names} uses row-level security and needs an effective identity: set "
                "POWERBI_RLS_USERNAME_SOURCE=principal (with App Service Authentication) so each user's "
                "identity is sent."
            )
        if any(d.roles_required for d in needing) and not identity.roles:
            if self.settings.rls.roles_source == "principal":
                # The user's own roles were all outside POWERBI_RLS_ALLOWED_ROLES: their account, not the
                # configuration, is what lacks a role for this data.
                raise NotAllowed(
                    f"Dataset {names} requires a row-level-security role, and the signed-in user has none "
                    "that may be used here.",
                    hint="(None of the user's roles is listed in POWERBI_RLS_ALLOWED_ROLES.)",
                )
            raise ConfigurationError(f"Dataset {names} requires row-level-security roles: set POWERBI_RLS_ROLES.")
        reports = tuple(sorted(r for r, found in models.items() if any(m.identity_required for m in found)))
        return EffectiveIdentity(
            identity.username, identity.roles, identity.custom_data, tuple(d.id for d in needing), reports
        )


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _quoted(value: str) -> str:
    """A caller's value, echoed back short and printable: it may be anything."""
    shown = "".join(c if c.isprintable() else "?" for c in value[:40])
    return f'"{shown}"' + ("..." if len(value) > 40 else "")

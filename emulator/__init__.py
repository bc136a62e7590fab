"""Local emulator of the upstream services: Microsoft Entra ID and the Power BI REST API.

See :mod:`emulator.server` (run standalone with ``python -m emulator.server``), :mod:`emulator.catalog` (the
default identities and catalogue), :mod:`emulator.entra` and :mod:`emulator.powerbi`.  ``FakeUpstream`` and
``Recorded`` are loaded lazily so that ``python -m emulator.server`` does not import that module twice (runpy
warns when it is pre-imported).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from emulator.catalog import (
    CAPACITY_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    DASHBOARD_ID,
    DATASET_ID,
    DEFAULT_CATALOG,
    DEFAULT_MEMBERS,
    IDENTITY_DATASET_ID,
    IDENTITY_REPORT_ID,
    MANAGED_IDENTITY_CLIENT_ID,
    OTHER_DATASET_ID,
    OTHER_REPORT_ID,
    OTHER_WORKSPACE_ID,
    PAGINATED_REPORT_ID,
    PASSWORD,
    PLAIN_TILE_ID,
    POWERBI_RESOURCE,
    PUBLIC_CLIENT_ID,
    REPORT_ID,
    RLS_DASHBOARD_ID,
    RLS_DATASET_ID,
    RLS_REPORT_ID,
    RLS_ROLES,
    RLS_TILE_ID,
    TENANT_ID,
    TILE_ID,
    UNSHARED_DATASET_ID,
    UNSHARED_REPORT_ID,
    UNSHARED_WORKSPACE_ID,
    USER_ASSIGNED_CLIENT_ID,
    USERNAME,
    WORKSPACE_ID,
)
from emulator.entra import ClientCertificate, IssuedAccessToken, make_client_certificate
from emulator.powerbi import TRIAL_QUOTA_CODE, IssuedEmbedToken

if TYPE_CHECKING:
    from emulator.server import FakeUpstream, Recorded

_LAZY = {"FakeUpstream", "Recorded"}
__all__ = [
    "CAPACITY_ID",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "DASHBOARD_ID",
    "DATASET_ID",
    "DEFAULT_CATALOG",
    "DEFAULT_MEMBERS",
    "IDENTITY_DATASET_ID",
    "IDENTITY_REPORT_ID",
    "MANAGED_IDENTITY_CLIENT_ID",
    "OTHER_DATASET_ID",
    "OTHER_REPORT_ID",
    "OTHER_WORKSPACE_ID",
    "PAGINATED_REPORT_ID",
    "PASSWORD",
    "PLAIN_TILE_ID",
    "POWERBI_RESOURCE",
    "PUBLIC_CLIENT_ID",
    "REPORT_ID",
    "RLS_DASHBOARD_ID",
    "RLS_DATASET_ID",
    "RLS_REPORT_ID",
    "RLS_ROLES",
    "RLS_TILE_ID",
    "TENANT_ID",
    "TILE_ID",
    "TRIAL_QUOTA_CODE",
    "UNSHARED_DATASET_ID",
    "UNSHARED_REPORT_ID",
    "UNSHARED_WORKSPACE_ID",
    "USERNAME",
    "USER_ASSIGNED_CLIENT_ID",
    "WORKSPACE_ID",
    "ClientCertificate",
    "FakeUpstream",
    "IssuedAccessToken",
    "IssuedEmbedToken",
    "Recorded",
    "make_client_certificate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("emulator.server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

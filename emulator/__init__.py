"""Local emulator of the upstream services: Microsoft Entra ID and the Power BI REST API.

See :mod:`emulator.server`; run standalone with ``python -m emulator.server``.  Names are re-exported lazily
so that ``python -m emulator.server`` does not import the module twice (runpy warns when it is pre-imported).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.server import (
        CLIENT_ID,
        CLIENT_SECRET,
        DASHBOARD_ID,
        DATASET_ID,
        DEFAULT_CATALOG,
        OTHER_DATASET_ID,
        OTHER_REPORT_ID,
        OTHER_WORKSPACE_ID,
        PASSWORD,
        POWERBI_RESOURCE,
        PUBLIC_CLIENT_ID,
        REPORT_ID,
        TENANT_ID,
        USERNAME,
        WORKSPACE_ID,
        FakeUpstream,
        IssuedAccessToken,
        IssuedEmbedToken,
        Recorded,
    )

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "DASHBOARD_ID",
    "DATASET_ID",
    "DEFAULT_CATALOG",
    "OTHER_DATASET_ID",
    "OTHER_REPORT_ID",
    "OTHER_WORKSPACE_ID",
    "PASSWORD",
    "POWERBI_RESOURCE",
    "PUBLIC_CLIENT_ID",
    "REPORT_ID",
    "TENANT_ID",
    "USERNAME",
    "WORKSPACE_ID",
    "FakeUpstream",
    "IssuedAccessToken",
    "IssuedEmbedToken",
    "Recorded",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("emulator.server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

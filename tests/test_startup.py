"""What ``import function_app`` loads: the worker's cold start pays for every module imported at the top.

PyJWT and cryptography are needed only to sign in with a certificate (MSAL imports PyJWT then) or to
encrypt the shared cache: importing them at start cost 1.4x the import of the three runtime packages
(``python benchmarks/bench.py`` prints the ratio). A fresh interpreter shows what the import loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loaded_after(code: str) -> list[str]:
    probe = f"import sys, json; {code}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)  # noqa: S603
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_importing_function_app_loads_neither_pyjwt_nor_cryptography() -> None:
    modules = loaded_after("import function_app")

    assert "function_app" in modules and "msal" in modules  # the probe did import the app
    assert [m for m in modules if m.split(".")[0] in ("jwt", "cryptography")] == []
    # A certificate sign-in still maps PyJWT's errors: tests/test_entra_outage.py (a key MSAL cannot use).

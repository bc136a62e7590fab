"""``python -m emulator.doctor``: the doctor (``python -m shared.doctor``) against the local emulator.

The same checklist, arguments and settings; only the HTTP session differs: MSAL sends its user-realm
request (username-password sign-in) to the authority's host without its port, and the emulator does
not listen on 443, so the session routes that host to the authority's port
(``emulator.entra.emulator_session``). Against Entra ID itself, use ``python -m shared.doctor``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from emulator.entra import emulator_session
from shared import doctor


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    named = Path(args[args.index("--settings") + 1]) if "--settings" in args[:-1] else None
    env = doctor.load_env(named, os.environ).values  # the settings the doctor will read, for their authority
    authority = env.get("POWERBI_AUTHORITY_HOST", "")
    return doctor.main(args, session=emulator_session(authority) if authority else None)


if __name__ == "__main__":
    sys.exit(main())

"""The demos' guard: ends every process of the demo's process group once its launcher has ended, however it ended.

``scripts/demo.py`` (and ``demo_swa.py``) start this first, as the leader of a new process group in their own
session, and start every service in that group. The guard's standard input is a pipe whose only writer is the
launcher: it reads until end-of-file, which comes when the launcher exits, is killed (even by SIGKILL, which
it cannot catch) or closes it after stopping the services itself. Then it sends SIGTERM to the whole group,
gives the members a few seconds to go, and sends SIGKILL to any left.

Why a group and not only Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): that signal reaches the
launcher's direct children only, while the SWA CLI serves from a child of its own, which would survive.
Everything started from the group stays in it, so one ``killpg`` reaches it all.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE_SECONDS = 5.0  # for the services to stop cleanly before they are killed


def members(group: int) -> list[int]:
    """The processes of ``group`` other than this one (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # The command name (field 2) is in parentheses and may hold spaces: split after it.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:  # fields after the name: state, ppid, pgrp, ...
            found.append(int(entry.name))
    return found


def sweep(group: int) -> None:
    """SIGTERM to the group, then SIGKILL to whatever is still in it after the grace period."""
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in members(group):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> int:
    # Ctrl-C goes to the terminal's foreground group (the launcher's), not here; the group's SIGTERM is ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass  # the launcher never writes: end-of-file is the message
    sweep(os.getpgid(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

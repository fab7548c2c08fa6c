"""Fault points for the reliability tests: named spots where a test can have the worker die (or freeze).

Disarmed unless the process was started with FAULT_POINT naming a spot (production never sets it); callers test
`faults.armed` first, so a disarmed point costs one attribute read. FAULT_ACTION says what happens there: `kill`
(the default) sends the process SIGKILL; `stop` sends it SIGSTOP, so it freezes mid-flight, holding whatever it
holds, until the test sends SIGCONT (then it carries on from the fault point).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

armed: str = ""
_signal = signal.SIGKILL


def arm(environ: Mapping[str, str]) -> None:
    """Read FAULT_POINT and FAULT_ACTION once, at startup."""
    global armed, _signal
    armed = environ.get("FAULT_POINT", "")
    _signal = signal.SIGSTOP if environ.get("FAULT_ACTION", "kill") == "stop" else signal.SIGKILL


def hit(name: str) -> None:
    if name == armed:
        os.kill(os.getpid(), _signal)

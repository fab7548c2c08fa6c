"""Fault points for the reliability tests: a named spot where a test can have the process die (or freeze).

Off unless FAULT_POINT names the spot; production never sets it. FAULT_ACTION says what happens there:
`kill` (the default) sends the process SIGKILL; `stop` sends it SIGSTOP, so it freezes mid-flight, holding
whatever it holds, until the test sends SIGCONT (then it carries on from the fault point).
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("FAULT_POINT", "")
_SIGNAL = signal.SIGSTOP if os.environ.get("FAULT_ACTION", "kill") == "stop" else signal.SIGKILL


def fault_point(name: str) -> None:
    if name == _ARMED:
        os.kill(os.getpid(), _SIGNAL)

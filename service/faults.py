"""Fault points for the reliability tests: a named spot where a test can have the process die.

Off unless FAULT_POINT names the spot; production never sets it.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("FAULT_POINT", "")


def fault_point(name: str) -> None:
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)

"""Who runs a job: the owner id of a driver process, and whether it is gone."""

from __future__ import annotations

import os
import socket
import uuid

import psutil


def new_owner() -> str:
    """host:pid:nonce, unique per driver."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_owner(owner: str) -> bool:
    """True when ``owner`` (host:pid:nonce) names a process of this host that is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not psutil.pid_exists(int(pid))

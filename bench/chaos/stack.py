"""One mode's stack as processes on free ports: the children `make run` starts (inbox_backend/stack.py), with
the backend's egress mode and direct timeouts set by the mode, and the sidecar left out in the direct modes."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from bench.processes import Processes, free_port_run, free_ports, wait_http
from inbox_backend.settings import Upstream
from inbox_backend.stack import Ports, children

LOCAL_POLICY = "config/policy.local.yaml"  # its upstream URLs, listen and admin come from the environment
MEDIA_SIZE = 64 * 1024  # the simulator's default (5 MiB) would make media downloads the whole benchmark

# The backend's environment per mode. legacy: the team's code before the sidecar's fixes, direct with its old
# timeouts (no retries: the backend never had any). direct: today's rollback mode, today's defaults.
MODES: Mapping[str, Mapping[str, str]] = {
    "legacy": {"EGRESS_MODE": "direct", "DIRECT_TIMEOUT_GEMINI": "45", "DIRECT_TIMEOUT_WHATSAPP": "20",
               "DIRECT_TIMEOUT_AUTH": "10"},
    "direct": {"EGRESS_MODE": "direct"},
    "sidecar": {"EGRESS_MODE": "sidecar"},
}


@dataclass(frozen=True)
class ModeStack:
    mode: str
    ports: Ports

    @property
    def backend(self) -> str:
        return self.ports.backend_url

    @property
    def control(self) -> str:
        return self.ports.control_url

    @property
    def supabase(self) -> str:
        return self.ports.simulator_url(Upstream.SUPABASE)

    @property
    def admin(self) -> str | None:
        return self.ports.admin_url if self.mode == "sidecar" else None


def start(procs: Processes, mode: str, policy: str = LOCAL_POLICY) -> ModeStack:
    backend, sidecar, admin = free_ports(3)
    ports = Ports(backend, sidecar, admin, free_port_run(5))
    environ = {**os.environ, **MODES[mode]}
    for child in children(ports, policy, environ):
        if child.name == "sidecar" and mode != "sidecar":
            continue
        args = [*child.args, "--media-size", str(MEDIA_SIZE)] if child.name == "simulator" else list(child.args)
        proc = procs.start(child.name, [sys.executable, "-m", *args], core=None, env=child.env)
        wait_http(child.ready_url, proc, child.name, procs, timeout=30)
    return ModeStack(mode, ports)

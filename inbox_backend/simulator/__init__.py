"""Fault-injecting simulator of the upstream APIs the inbox backend calls.

Gemini (generativelanguage v1beta), WhatsApp Cloud API (Graph + media host) and Supabase
(PostgREST + GoTrue), each on its own port, plus a control API to inject faults and read
counters. Run ``python -m inbox_backend.simulator`` or, in tests::

    async with run_simulator() as sim:
        sim.state.add_fault(upstream="gemini", kind="status", status=503, count=1)
        ...  # call sim.urls["gemini"]
"""

from .config import DEFAULT_PORTS, SERVERS, UPSTREAMS, SimulatorConfig
from .faults import FAULT_KINDS, Fault, FaultKind
from .media import media_bytes, media_sha256
from .seed import ADMIN_ID, ADMIN_TOKEN, SAMPLE_PASSWORD, USER_ID, USER_TOKEN
from .server import Simulator, run_simulator
from .state import Delivery, MediaInfo, SimulatorState

__all__ = [
    "ADMIN_ID",
    "ADMIN_TOKEN",
    "DEFAULT_PORTS",
    "FAULT_KINDS",
    "SAMPLE_PASSWORD",
    "SERVERS",
    "UPSTREAMS",
    "USER_ID",
    "USER_TOKEN",
    "Delivery",
    "Fault",
    "FaultKind",
    "MediaInfo",
    "Simulator",
    "SimulatorConfig",
    "SimulatorState",
    "media_bytes",
    "media_sha256",
    "run_simulator",
]

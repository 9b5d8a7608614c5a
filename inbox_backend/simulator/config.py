"""Static configuration of the simulator: credentials, ports, streaming and media knobs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final

GEMINI: Final = "gemini"
WHATSAPP: Final = "whatsapp"
WHATSAPP_MEDIA: Final = "whatsapp_media"
SUPABASE: Final = "supabase"
CONTROL: Final = "control"

#: Upstreams that are simulated (and can receive faults), in start-up order.
UPSTREAMS: Final[tuple[str, ...]] = (GEMINI, WHATSAPP, WHATSAPP_MEDIA, SUPABASE)
#: Every server the simulator runs: the upstreams plus the control API.
SERVERS: Final[tuple[str, ...]] = (*UPSTREAMS, CONTROL)

#: Ports used by ``python -m inbox_backend.simulator`` unless overridden.
DEFAULT_PORTS: Final[dict[str, int]] = {
    CONTROL: 9100,
    GEMINI: 9101,
    WHATSAPP: 9102,
    WHATSAPP_MEDIA: 9103,
    SUPABASE: 9104,
}

MIB: Final = 1024 * 1024


@dataclass
class SimulatorConfig:
    """Tunables; mutable at run time through ``state.config`` or ``PATCH /config`` on the control port."""

    gemini_api_key: str = "sim-gemini-key"
    whatsapp_token: str = "sim-whatsapp-token"
    supabase_anon_key: str = "sim-anon-key"
    supabase_service_key: str = "sim-service-key"
    #: Pause between two chunks of a Gemini stream, in seconds.
    stream_chunk_gap: float = 0.02
    #: Upper bound on the number of chunks a Gemini reply is streamed in.
    stream_chunks: int = 4
    #: Size of a media download when the media id has no registered size.
    default_media_size: int = 5 * MIB
    #: Per media id sizes (bytes); ``state.set_media`` adds more at run time.
    media_sizes: dict[str, int] = field(default_factory=dict)
    #: Base URL put into media info ``url`` fields; ``None`` = the simulator's own media server.
    media_base_url: str | None = None
    #: Size of the pieces a media body is generated and written in.
    media_chunk_size: int = 64 * 1024
    #: How long (seconds) in-flight requests may take to finish when the simulator stops.
    shutdown_timeout: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update (JSON from the control API), checking names and types."""
        known = {f.name: f for f in fields(self)}
        staged: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown config field {name!r}")
            current = getattr(self, name)
            staged[name] = _coerce(name, current, value)
        for name, value in staged.items():
            setattr(self, name, value)


def _coerce(name: str, current: Any, value: Any) -> Any:
    if name == "media_base_url":
        if value is None or isinstance(value, str):
            return value.rstrip("/") if isinstance(value, str) else None
        raise ValueError("media_base_url must be a string or null")
    if name == "media_sizes":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()
        ):
            raise ValueError("media_sizes must map media ids to non-negative integers")
        return dict(value)
    if isinstance(current, bool) or isinstance(value, bool):
        raise ValueError(f"{name} has the wrong type")
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        minimum = 1 if name in ("stream_chunks", "media_chunk_size") else 0
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}")
        return value
    if isinstance(current, float):
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a non-negative number")
        return float(value)
    raise ValueError(f"{name} cannot be changed")

"""``SimulatorState``: the one mutable object shared by every simulated server and the tests."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .config import WHATSAPP_MEDIA, SimulatorConfig
from .faults import Fault, FaultBook
from .postgrest import Database
from .seed import seed_database, seed_users


@dataclass(frozen=True)
class Delivery:
    """A WhatsApp message the simulated Graph API accepted (even if the answer was then lost)."""

    message_id: str
    phone_number_id: str
    to: str
    type: str
    body: str | None
    payload: dict[str, Any]
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "phone_number_id": self.phone_number_id,
            "to": self.to,
            "type": self.type,
            "body": self.body,
            "payload": self.payload,
            "at": self.at,
        }


@dataclass(frozen=True)
class MediaInfo:
    media_id: str
    size: int
    mime_type: str = "image/jpeg"


class SimulatorState:
    """Faults, counters, deliveries, sample data and config of one simulator instance.

    In-process tests use it directly (``sim.state``); the control port exposes the same operations.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.faults = FaultBook()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.faults_applied: Counter[tuple[str, str, str]] = Counter()
        self.deliveries: list[Delivery] = []
        self.db: Database = seed_database()
        #: GoTrue users by access token.
        self.users: dict[str, dict[str, Any]] = seed_users()
        self.media: dict[str, MediaInfo] = {}
        #: Base URL of every running server, filled in by ``run_simulator``.
        self.urls: dict[str, str] = {}
        #: Set when the simulator stops, so hanging handlers give up.
        self.closing = asyncio.Event()
        self._wamid_prefix = secrets.token_hex(4).upper()
        self._wamids = itertools.count(1)
        self._sha_cache: dict[tuple[str, int], str] = {}

    # -- faults -------------------------------------------------------------------------------
    def add_fault(self, fault: Fault | None = None, /, **kwargs: Any) -> Fault:
        """Activate a fault: ``add_fault(Fault(...))`` or ``add_fault(upstream=..., kind=..., ...)``."""
        if fault is None:
            fault = Fault(**kwargs)
        elif kwargs:
            raise TypeError("pass either a Fault or keyword arguments, not both")
        return self.faults.add(fault)

    def remove_fault(self, fault_id: int) -> bool:
        return self.faults.remove(fault_id)

    def clear_faults(self) -> None:
        self.faults.clear()

    def list_faults(self) -> list[Fault]:
        return self.faults.list()

    def take_fault(self, upstream: str, route: str) -> Fault | None:
        fault = self.faults.take(upstream, route)
        if fault is not None:
            self.faults_applied[(upstream, route, fault.kind)] += 1
        return fault

    # -- counters -----------------------------------------------------------------------------
    def count_request(self, upstream: str, route: str) -> None:
        self.requests[(upstream, route)] += 1

    def request_count(self, upstream: str | None = None, route: str | None = None) -> int:
        """Requests received, optionally restricted to an upstream and/or a route (case-insensitive)."""
        return sum(
            n
            for (up, rt), n in self.requests.items()
            if (upstream is None or up == upstream) and (route is None or rt.lower() == route.lower())
        )

    def fault_count(self, upstream: str | None = None, kind: str | None = None) -> int:
        """How many requests a fault was applied to."""
        return sum(
            n
            for (up, _rt, kd), n in self.faults_applied.items()
            if (upstream is None or up == upstream) and (kind is None or kd == kind)
        )

    # -- deliveries ---------------------------------------------------------------------------
    def next_wamid(self) -> str:
        return f"wamid.SIM{self._wamid_prefix}{next(self._wamids):010d}"

    def record_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    def deliveries_to(self, to: str | None = None, body: str | None = None) -> list[Delivery]:
        """Deliveries, optionally only those to ``to`` and/or with text ``body``."""
        return [d for d in self.deliveries if (to is None or d.to == to) and (body is None or d.body == body)]

    def delivery_count(self, to: str | None = None, body: str | None = None) -> int:
        return len(self.deliveries_to(to, body))

    # -- media --------------------------------------------------------------------------------
    def set_media(self, media_id: str, size: int, mime_type: str = "image/jpeg") -> MediaInfo:
        if size < 0:
            raise ValueError("size must be >= 0")
        info = MediaInfo(media_id, size, mime_type)
        self.media[media_id] = info
        return info

    def media_info(self, media_id: str) -> MediaInfo:
        info = self.media.get(media_id)
        if info is not None:
            return info
        size = self.config.media_sizes.get(media_id, self.config.default_media_size)
        return MediaInfo(media_id, size)

    def media_base_url(self) -> str:
        return self.config.media_base_url or self.urls.get(WHATSAPP_MEDIA, "")

    def cached_sha256(self, media_id: str, size: int) -> str | None:
        return self._sha_cache.get((media_id, size))

    def cache_sha256(self, media_id: str, size: int, digest: str) -> None:
        self._sha_cache[(media_id, size)] = digest

    # -- whole state --------------------------------------------------------------------------
    def reset(self) -> None:
        """Clear faults, counters and deliveries; restore the sample data, users and media."""
        self.faults.clear()
        self.requests.clear()
        self.faults_applied.clear()
        self.deliveries.clear()
        self.db = seed_database()
        self.users = seed_users()
        self.media.clear()

    def stats(self) -> dict[str, Any]:
        requests: dict[str, dict[str, int]] = {}
        for (upstream, route), n in sorted(self.requests.items()):
            requests.setdefault(upstream, {})[route] = n
        applied: dict[str, dict[str, int]] = {}
        for (upstream, route, kind), n in sorted(self.faults_applied.items()):
            applied.setdefault(upstream, {})[f"{route}:{kind}"] = n
        return {
            "requests": requests,
            "total_requests": sum(self.requests.values()),
            "faults_applied": applied,
            "faults": [f.to_dict() for f in self.faults.list()],
            "deliveries": [d.to_dict() for d in self.deliveries],
            "delivery_count": len(self.deliveries),
        }

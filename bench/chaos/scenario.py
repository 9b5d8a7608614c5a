"""The fixed scenario: which faults, which traffic, when. Everything here is a pure function of the options and
the seed, so the three modes get the same requests at the same offsets."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["webhook", "post_message", "bot_reply", "bot_profile", "get_message", "media"]
# The share of each request kind in the mix. Webhooks carry the most weight: each one also makes the backend
# call Supabase, Gemini and WhatsApp in the background (the bot reply), where no caller sees a failure.
MIX: dict[Endpoint, float] = {
    "webhook": 0.30, "post_message": 0.20, "bot_reply": 0.15, "bot_profile": 0.15, "get_message": 0.15, "media": 0.05,
}
# Seed data (inbox_backend/simulator/seed.py): the user's messages (accounts 1 and 3), and the one with media.
USER_MESSAGE_IDS = (1, 2, 3, 4, 7)
MEDIA_MESSAGE_ID = 3
USER_CONVERSATION = 1  # account 1's (bot on), Alice's
OUTAGE_SHARE = 30 / 70  # the 30 s Gemini outage in a 70 s run, kept in proportion for other durations


@dataclass(frozen=True)
class Planned:
    index: int
    at: float  # seconds after the start of the run: the intended send time
    endpoint: Endpoint


@dataclass(frozen=True)
class Scenario:
    rate: float  # requests per second, on average (Poisson arrivals)
    seconds: float
    seed: int

    @property
    def outage(self) -> tuple[float, float]:
        """(start, end) of the Gemini outage, in the middle of the run."""
        length = self.seconds * OUTAGE_SHARE
        start = (self.seconds - length) / 2
        return start, start + length

    def plan(self) -> list[Planned]:
        """Exponential gaps from a seeded RNG: open-loop arrivals that do not depend on any answer."""
        rng = random.Random(self.seed)
        kinds, weights = list(MIX), list(MIX.values())
        planned: list[Planned] = []
        at = rng.expovariate(self.rate)
        while at < self.seconds:
            planned.append(Planned(len(planned), at, rng.choices(kinds, weights)[0]))
            at += rng.expovariate(self.rate)
        return planned


def steady_faults() -> list[dict[str, Any]]:
    """The simulator's faults for the whole run. The first fault that fires wins (simulator/faults.py), and a
    later fault's ratio counts only the requests the earlier ones let through: so its ratio is divided by what
    is left, to hit the intended share of all requests."""
    return [
        {"upstream": "gemini", "kind": "status", "status": 503, "ratio": 0.20},
        {"upstream": "gemini", "kind": "hang", "ratio": 0.05 / 0.80},
        {"upstream": "whatsapp", "route": "send_message", "kind": "reset_after", "ratio": 0.025},
        {"upstream": "whatsapp", "route": "send_message", "kind": "reset_before", "ratio": 0.025 / 0.975},
        {"upstream": "supabase", "kind": "delay", "delay": 3.0, "ratio": 0.10},
    ]


# Added during the outage: every Gemini request the steady faults let through is answered 503.
OUTAGE_FAULT: dict[str, Any] = {"upstream": "gemini", "kind": "status", "status": 503}

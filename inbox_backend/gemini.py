"""Gemini `generateContent`: the bot profile is the system instruction, the conversation the contents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inbox_backend.egress import Call, Caller
from inbox_backend.errors import ApiError
from inbox_backend.settings import Upstream

Row = dict[str, Any]
ROLES = {"in": "user", "out": "model"}


def conversation_contents(messages: Sequence[Row]) -> list[dict[str, Any]]:
    """Oldest first; consecutive messages of one side become one turn (Gemini expects turns to alternate)."""
    contents: list[dict[str, Any]] = []
    for message in messages:
        text = message.get("body")
        role = ROLES.get(str(message.get("direction")))
        if not text or role is None:
            continue  # media without a caption: nothing the model can read
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].append({"text": text})
        else:
            contents.append({"role": role, "parts": [{"text": text}]})
    return contents


def generate_request(system_prompt: str, messages: Sequence[Row]) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": conversation_contents(messages)}
    if system_prompt:
        body["systemInstruction"] = {"parts": [{"text": system_prompt}]}
    return body


def reply_text(data: Any) -> str:
    candidates = data.get("candidates") if isinstance(data, dict) else None
    if candidates and isinstance(candidates[0], dict):
        parts = (candidates[0].get("content") or {}).get("parts") or []
        text = "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        if text.strip():
            return text.strip()
    # A blocked or empty candidate: nothing to send, and Gemini's fault rather than the caller's.
    raise ApiError(502, "external_api_unavailable", detail="gemini returned no text")


class Gemini:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def generate(self, model: str, system_prompt: str, messages: Sequence[Row]) -> str:
        call = Call(
            Upstream.GEMINI,
            "POST",
            f"/v1beta/models/{model}:generateContent",
            json=generate_request(system_prompt, messages),
        )
        return reply_text((await self.caller.send(call)).data)

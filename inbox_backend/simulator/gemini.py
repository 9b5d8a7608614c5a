"""Simulated Gemini API (generativelanguage v1beta): generateContent and streamGenerateContent.

The reply is ``"Echo: <text of the last user turn>"`` so tests can predict it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from .config import GEMINI
from .errors import google_error
from .routing import JSON_TYPE, STATE_KEY, Reply, dumps, endpoint, json_reply, not_found_route, read_json
from .state import SimulatorState

_METHODS: Final = {"generateContent": "generate", "streamGenerateContent": "stream"}
_MODEL_PREFIXES: Final = ("gemini-", "gemma-", "learnlm-")


def _route_name(request: web.Request) -> str:
    method = request.match_info.get("target", "").rpartition(":")[2]
    return _METHODS.get(method, "not_found")


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _texts(content: Any) -> list[str]:
    if not isinstance(content, dict):
        return []
    parts = content.get("parts")
    if not isinstance(parts, list):
        return []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _check_key(request: web.Request, state: SimulatorState) -> Reply | None:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        return json_reply(
            google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
            ),
            403,
        )
    if key != state.config.gemini_api_key:
        return json_reply(
            google_error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": "API key not valid. Please pass a valid API key.",
                    },
                ],
            ),
            400,
        )
    return None


class _Generation:
    """What one request asks for and what the simulated model answers."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        contents = body["contents"]
        self.prompt_tokens = sum(_tokens(t) for c in contents for t in _texts(c))
        self.prompt_tokens += sum(_tokens(t) for t in _texts(body.get("systemInstruction")))
        user_turns = [c for c in contents if isinstance(c, dict) and c.get("role", "user") == "user"]
        last = " ".join(_texts(user_turns[-1])) if user_turns else ""
        text = f"Echo: {last}"
        self.finish_reason = "STOP"
        config = body.get("generationConfig")
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
        max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
        if max_tokens and _tokens(text) > max_tokens:
            text = text[: max_tokens * 4]
            self.finish_reason = "MAX_TOKENS"
        self.text = text
        self.response_id = secrets.token_urlsafe(16)

    def usage(self, candidates_text: str | None) -> dict[str, int]:
        if candidates_text is None:
            return {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens}
        out = _tokens(candidates_text)
        return {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": out,
            "totalTokenCount": self.prompt_tokens + out,
        }

    def response(self, text: str, *, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if final:
            candidate["finishReason"] = self.finish_reason
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(self.text if final else None),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def pieces(self, max_chunks: int) -> list[str]:
        words = self.text.split(" ")
        tokens = [words[0]] + [" " + w for w in words[1:]]
        count = max(1, min(max_chunks, len(tokens)))
        size, extra = divmod(len(tokens), count)
        pieces: list[str] = []
        start = 0
        for i in range(count):
            end = start + size + (1 if i < extra else 0)
            pieces.append("".join(tokens[start:end]))
            start = end
        return pieces


async def _parse(request: web.Request, state: SimulatorState) -> _Generation | Reply:
    error = _check_key(request, state)
    if error is not None:
        return error
    target = request.match_info["target"]
    model = target.rpartition(":")[0]
    if not model.startswith(_MODEL_PREFIXES):
        method = target.rpartition(":")[2]
        return json_reply(
            google_error(
                404,
                f"models/{model} is not found for API version {request.match_info['version']}, or is not "
                f"supported for {method}. Call ListModels to see the list of available models and their "
                "supported methods.",
                "NOT_FOUND",
            ),
            404,
        )
    ok, body = await read_json(request)
    if not ok or not isinstance(body, dict):
        return json_reply(
            google_error(400, "Invalid JSON payload received. Unexpected end of string.", "INVALID_ARGUMENT"),
            400,
        )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return json_reply(
            google_error(
                400, "* GenerateContentRequest.contents: contents is not specified\n", "INVALID_ARGUMENT"
            ),
            400,
        )
    return _Generation(model, body)


async def generate(request: web.Request, state: SimulatorState) -> Reply:
    parsed = await _parse(request, state)
    if isinstance(parsed, Reply):
        return parsed
    return json_reply(parsed.response(parsed.text, final=True))


async def stream(request: web.Request, state: SimulatorState) -> Reply:
    parsed = await _parse(request, state)
    if isinstance(parsed, Reply):
        return parsed
    pieces = parsed.pieces(state.config.stream_chunks)
    responses = [parsed.response(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    gap = state.config.stream_chunk_gap
    sse = request.query.get("alt") == "sse"

    async def body() -> AsyncIterator[bytes]:
        for i, item in enumerate(responses):
            if i:
                await asyncio.sleep(gap)
            if sse:
                yield b"data: " + dumps(item) + b"\r\n\r\n"
            else:
                yield (
                    (b"[" if i == 0 else b",\r\n") + dumps(item) + (b"]" if i == len(responses) - 1 else b"")
                )

    headers = {"Cache-Control": "no-cache"} if sse else {}
    return Reply(200, body(), "text/event-stream" if sse else JSON_TYPE, headers)


def _not_found_body(request: web.Request) -> Any:
    return google_error(404, f"The requested URL {request.path} was not found on this server.", "NOT_FOUND")


async def _dispatch(request: web.Request, state: SimulatorState) -> Reply:
    method = request.match_info["target"].rpartition(":")[2]
    if method == "generateContent":
        return await generate(request, state)
    if method == "streamGenerateContent":
        return await stream(request, state)
    return json_reply(_not_found_body(request), 404)


def create_app(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_post(
        r"/{version:v1beta|v1|v1alpha}/models/{target}", endpoint(GEMINI, _route_name, _dispatch)
    )
    app.router.add_route("*", "/{tail:.*}", not_found_route(GEMINI, _not_found_body))
    return app

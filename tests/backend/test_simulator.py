"""The upstream simulator (Gemini, WhatsApp, Supabase + faults), exercised over real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from inbox_backend.simulator import (
    ADMIN_ID,
    USER_ID,
    Fault,
    Simulator,
    SimulatorConfig,
    media_bytes,
    run_simulator,
)
from inbox_backend.simulator.postgrest import PostgrestError, parse_query
from inbox_backend.simulator.seed import seed_database

GEMINI_KEY = {"x-goog-api-key": "sim-gemini-key"}
WA_AUTH = {"Authorization": "Bearer sim-whatsapp-token"}
SB_KEY = {"apikey": "sim-anon-key"}
OBJECT = {"Accept": "application/vnd.pgrst.object+json"}
REPRESENTATION = {"Prefer": "return=representation"}
PHONE_ID = "106540352242922"


def _prompt(text: str) -> dict[str, Any]:
    return {
        "systemInstruction": {"parts": [{"text": "be nice"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "earlier question"}]},
            {"role": "model", "parts": [{"text": "earlier answer"}]},
            {"role": "user", "parts": [{"text": text}]},
        ],
        "generationConfig": {"temperature": 0.2},
    }


def _wa_text(to: str, body: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(stream_chunk_gap=0.05, default_media_size=256 * 1024)
    async with run_simulator("127.0.0.1", config=config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _gen_url(sim: Simulator, method: str = "generateContent", model: str = "gemini-2.0-flash") -> str:
    return f"{sim.urls['gemini']}/v1beta/models/{model}:{method}"


def _send_url(sim: Simulator) -> str:
    return f"{sim.urls['whatsapp']}/v19.0/{PHONE_ID}/messages"


def _rest(sim: Simulator, table: str) -> str:
    return f"{sim.urls['supabase']}/rest/v1/{table}"


# -- startup --------------------------------------------------------------------------------------
async def test_run_simulator_picks_free_ports_and_publishes_urls(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert set(sim.urls) == {"gemini", "whatsapp", "whatsapp_media", "supabase", "control"}
    assert len(set(sim.ports.values())) == 5 and all(p > 0 for p in sim.ports.values())
    assert sim.state.urls == sim.urls
    async with http.get(f"{sim.urls['control']}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["urls"] == sim.urls


# -- Gemini ---------------------------------------------------------------------------------------
async def test_generate_content_has_the_real_response_shape(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(_gen_url(sim), json=_prompt("hello there"), headers=GEMINI_KEY) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        data = await resp.json()
    candidate = data["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": "Echo: hello there"}], "role": "model"}
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    usage = data["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"] > 0
    assert data["modelVersion"] == "gemini-2.0-flash"
    assert sim.state.request_count("gemini", "generate") == 1


async def test_gemini_key_can_come_from_the_query_string(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(_gen_url(sim), params={"key": "sim-gemini-key"}, json=_prompt("q")) as resp:
        assert resp.status == 200


async def test_gemini_auth_and_request_errors_use_google_error_shape(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(_gen_url(sim), json=_prompt("x")) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["status"] == "PERMISSION_DENIED"
    async with http.post(_gen_url(sim), json=_prompt("x"), headers={"x-goog-api-key": "wrong"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
        assert "API key not valid" in error["message"]
        assert error["details"][0]["reason"] == "API_KEY_INVALID"
    async with http.post(_gen_url(sim), json={"contents": []}, headers=GEMINI_KEY) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
    async with http.post(_gen_url(sim, model="gpt-4"), json=_prompt("x"), headers=GEMINI_KEY) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["status"] == "NOT_FOUND"


async def test_sse_stream_chunks_arrive_one_by_one(sim: Simulator, http: aiohttp.ClientSession) -> None:
    text = "one two three four five six"
    url = _gen_url(sim, "streamGenerateContent")
    started = time.monotonic()
    arrivals: list[float] = []
    events: list[dict[str, Any]] = []
    async with http.post(url, params={"alt": "sse"}, json=_prompt(text), headers=GEMINI_KEY) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - started)
                events.append(json.loads(line[6:]))
    ended = time.monotonic() - started
    assert len(events) >= 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == f"Echo: {text}"
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "finishReason" not in events[0]["candidates"][0]
    # chunks are flushed individually: the first one long before the stream ends
    assert arrivals[-1] - arrivals[0] >= 0.05 * (len(events) - 1) * 0.8
    assert ended - arrivals[0] >= 0.05 * (len(events) - 1) * 0.8
    assert all(b >= a for a, b in itertools.pairwise(arrivals))
    assert sim.state.request_count("gemini", "stream") == 1


async def test_stream_without_alt_sse_is_a_json_array(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = _gen_url(sim, "streamGenerateContent")
    async with http.post(url, json=_prompt("a b c d"), headers=GEMINI_KEY) as resp:
        assert resp.status == 200
        chunks = json.loads(await resp.read())
    assert isinstance(chunks, list) and len(chunks) >= 2
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Echo: a b c d"


# -- WhatsApp -------------------------------------------------------------------------------------
async def test_send_message_answers_like_graph_and_records_one_delivery(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(_send_url(sim), json=_wa_text("15550001001", "hi Alice"), headers=WA_AUTH) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["messaging_product"] == "whatsapp"
    assert data["contacts"] == [{"input": "15550001001", "wa_id": "15550001001"}]
    wamid = data["messages"][0]["id"]
    assert wamid.startswith("wamid.")
    assert sim.state.delivery_count(to="15550001001", body="hi Alice") == 1
    assert sim.state.deliveries_to("15550001001")[0].message_id == wamid
    async with http.post(_send_url(sim), json=_wa_text("15550001001", "again"), headers=WA_AUTH) as resp:
        assert (await resp.json())["messages"][0]["id"] != wamid


async def test_send_message_rejects_bad_token_and_bad_payload(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    bad = {"Authorization": "Bearer nope"}
    async with http.post(_send_url(sim), json=_wa_text("1555", "x"), headers=bad) as resp:
        assert resp.status == 401
        error = (await resp.json())["error"]
        assert error["code"] == 190 and error["type"] == "OAuthException" and "fbtrace_id" in error
    async with http.post(_send_url(sim), json={"to": "1555", "text": {"body": "x"}}, headers=WA_AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 100
    assert sim.state.delivery_count() == 0


async def test_media_info_points_to_the_media_server_and_download_streams(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    size = 3 * 1024 * 1024 + 17
    sim.state.set_media("media-42", size)
    async with http.get(f"{sim.urls['whatsapp']}/v19.0/media-42", headers=WA_AUTH) as resp:
        assert resp.status == 200
        info = await resp.json()
    assert info["id"] == "media-42" and info["file_size"] == size and info["mime_type"] == "image/jpeg"
    assert info["messaging_product"] == "whatsapp"
    assert info["url"].startswith(f"{sim.urls['whatsapp_media']}/media/media-42?token=")
    digest = hashlib.sha256()
    received = 0
    async with http.get(info["url"], headers=WA_AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.content_length == size
        async for chunk in resp.content.iter_chunked(256 * 1024):
            if received == 0:
                assert chunk[:3] == b"\xff\xd8\xff"
            received += len(chunk)
            digest.update(chunk)
    assert received == size
    assert digest.hexdigest() == info["sha256"]
    async with http.get(info["url"]) as resp:
        assert resp.status == 401
    assert sim.state.request_count("whatsapp_media", "media_download") == 2


async def test_media_base_url_is_configurable(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.state.config.media_base_url = "http://127.0.0.1:8081/whatsapp_media"
    async with http.get(f"{sim.urls['whatsapp']}/v19.0/m1", headers=WA_AUTH) as resp:
        info = await resp.json()
    assert info["url"].startswith("http://127.0.0.1:8081/whatsapp_media/media/m1?token=")
    assert info["file_size"] == 256 * 1024


def test_media_bytes_are_deterministic() -> None:
    assert media_bytes("a", 100_000) == media_bytes("a", 100_000)
    assert media_bytes("a", 1000) != media_bytes("b", 1000)
    body = media_bytes("a", 70_000)
    assert len(body) == 70_000 and body.startswith(b"\xff\xd8\xff\xe0") and body.endswith(b"\xff\xd9")


# -- Supabase PostgREST ---------------------------------------------------------------------------
async def test_rest_select_filter_order_limit(sim: Simulator, http: aiohttp.ClientSession) -> None:
    params = {"select": "id,body,direction", "conversation_id": "eq.1", "order": "id.desc", "limit": "2"}
    async with http.get(_rest(sim, "messages"), params=params, headers=SB_KEY) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Range"] == "0-1/*"
        rows = await resp.json()
    assert [r["id"] for r in rows] == [3, 2]
    assert set(rows[0]) == {"id", "body", "direction"}
    params = {"id": "in.(1,3)", "bot_enabled": "eq.true", "select": "*"}
    async with http.get(_rest(sim, "accounts"), params=params, headers=SB_KEY) as resp:
        assert [r["id"] for r in await resp.json()] == [1]
    params = {"direction": "neq.in", "created_at": "gt.2024-05-01T12:00:00Z"}
    async with http.get(_rest(sim, "messages"), params=params, headers=SB_KEY) as resp:
        assert [r["id"] for r in await resp.json()] == [6]
    params = {"limit": "2", "offset": "1", "order": "id.asc"}
    headers = {**SB_KEY, "Prefer": "count=exact"}
    async with http.get(_rest(sim, "contacts"), params=params, headers=headers) as resp:
        assert [r["id"] for r in await resp.json()] == [2, 3]
        assert resp.headers["Content-Range"] == "1-2/4"
    assert sim.state.request_count("supabase", "rest:messages:GET") == 2


async def test_rest_object_accept_returns_one_object_or_406(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    headers = {**SB_KEY, **OBJECT}
    params = {"account_id": "eq.1", "select": "system_prompt,model,enabled"}
    async with http.get(_rest(sim, "bot_profiles"), params=params, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/vnd.pgrst.object+json")
        profile = await resp.json()
    assert profile["model"] == "gemini-2.0-flash" and profile["enabled"] is True
    async with http.get(_rest(sim, "bot_profiles"), params={"account_id": "eq.99"}, headers=headers) as resp:
        assert resp.status == 406
        error = await resp.json()
    assert error["code"] == "PGRST116" and error["details"] == "The result contains 0 rows"
    assert set(error) == {"code", "details", "hint", "message"}


async def test_rest_insert_duplicate_and_ignore_duplicates(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    row = {
        "conversation_id": 1,
        "account_id": 1,
        "direction": "in",
        "body": "new!",
        "wa_message_id": "wamid.X1",
    }
    headers = {**SB_KEY, **REPRESENTATION}
    async with http.post(_rest(sim, "messages"), json=row, headers=headers) as resp:
        assert resp.status == 201
        [created] = await resp.json()
    assert created["id"] == 8 and created["created_at"] and created["media_id"] is None
    async with http.post(_rest(sim, "messages"), json=row, headers=SB_KEY) as resp:
        assert resp.status == 409
        error = await resp.json()
    assert error["code"] == "23505" and error["hint"] is None
    assert "duplicate key value violates unique constraint" in error["message"]
    assert "wa_message_id" in error["details"]
    ignore = {**SB_KEY, "Prefer": "return=representation,resolution=ignore-duplicates"}
    batch = [row, {**row, "wa_message_id": "wamid.X2", "body": "second"}]
    url = _rest(sim, "messages")
    async with http.post(url, params={"on_conflict": "wa_message_id"}, json=batch, headers=ignore) as resp:
        assert resp.status == 201
        assert [r["wa_message_id"] for r in await resp.json()] == ["wamid.X2"]
    async with http.post(url, params={"on_conflict": "wa_message_id"}, json=row, headers=ignore) as resp:
        assert resp.status == 201
        assert await resp.json() == []
    async with http.post(url, json={"body": "x"}, headers=SB_KEY) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "23502"
    async with http.post(
        url, json={**row, "wa_message_id": "w3", "conversation_id": 999}, headers=SB_KEY
    ) as resp:
        assert resp.status == 409
        assert (await resp.json())["code"] == "23503"
    async with http.post(url, json={**row, "wa_message_id": "w4"}, headers=SB_KEY) as resp:
        assert resp.status == 201
        assert await resp.read() == b""
    assert len([r for r in sim.state.db.rows("messages") if r["body"] == "new!"]) == 2


async def test_rest_update_and_delete(sim: Simulator, http: aiohttp.ClientSession) -> None:
    headers = {**SB_KEY, **REPRESENTATION, **OBJECT}
    url = _rest(sim, "accounts")
    async with http.patch(url, params={"id": "eq.1"}, json={"bot_enabled": False}, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["bot_enabled"] is False
    async with http.patch(url, params={"id": "eq.2"}, json={"name": "Globex 2"}, headers=SB_KEY) as resp:
        assert resp.status == 204
    async with http.patch(url, json={"name": "all"}, headers=SB_KEY) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"] == "UPDATE requires a WHERE clause"
    async with http.delete(
        _rest(sim, "messages"), params={"conversation_id": "eq.1"}, headers=SB_KEY
    ) as resp:
        assert resp.status == 204
    names = {r["id"]: r["name"] for r in sim.state.db.rows("accounts")}
    assert names[2] == "Globex 2"
    assert not [r for r in sim.state.db.rows("messages") if r["conversation_id"] == 1]


async def test_rest_errors_are_postgrest_shaped(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(_rest(sim, "accounts")) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == "No API key found in request"
    async with http.get(_rest(sim, "accounts"), headers={"apikey": "bad"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == "Invalid API key"
    async with http.get(_rest(sim, "nope"), headers=SB_KEY) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "PGRST205"
    async with http.get(_rest(sim, "accounts"), params={"foo": "eq.1"}, headers=SB_KEY) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "42703"


# -- Supabase auth --------------------------------------------------------------------------------
async def test_auth_user_admin_and_bad_token(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = f"{sim.urls['supabase']}/auth/v1/user"
    async with http.get(url, headers={**SB_KEY, "Authorization": "Bearer user-token"}) as resp:
        assert resp.status == 200
        user = await resp.json()
    assert user["id"] == USER_ID and user["aud"] == "authenticated" and user["role"] == "authenticated"
    assert "admin" not in user["app_metadata"]["roles"]
    async with http.get(url, headers={**SB_KEY, "Authorization": "Bearer admin-token"}) as resp:
        admin = await resp.json()
    assert admin["id"] == ADMIN_ID and "admin" in admin["app_metadata"]["roles"]
    owners = {r["owner_id"] for r in sim.state.db.rows("accounts")}
    assert {USER_ID, ADMIN_ID} <= owners
    async with http.get(url, headers={**SB_KEY, "Authorization": "Bearer forged"}) as resp:
        assert resp.status == 401
        error = await resp.json()
    assert (
        error["code"] == 401 and error["error_code"] == "bad_jwt" and error["msg"].startswith("invalid JWT")
    )
    assert sim.state.request_count("supabase", "auth_user") == 3


# -- faults ---------------------------------------------------------------------------------------
async def test_status_fault_with_retry_after_applies_count_times(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(
        Fault(upstream="gemini", route="generate", kind="status", status=503, retry_after=2, count=2)
    )
    statuses = []
    for _ in range(3):
        async with http.post(_gen_url(sim), json=_prompt("x"), headers=GEMINI_KEY) as resp:
            statuses.append(resp.status)
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "2"
                assert (await resp.json())["error"]["status"] == "UNAVAILABLE"
    assert statuses == [503, 503, 200]
    assert sim.state.list_faults() == []
    assert sim.state.fault_count("gemini", "status") == 2


async def test_status_fault_custom_body_and_route_glob(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.state.add_fault(upstream="supabase", route="rest:*:get", kind="status", status=500, body={"oops": 1})
    async with http.get(_rest(sim, "contacts"), headers=SB_KEY) as resp:
        assert resp.status == 500 and await resp.json() == {"oops": 1}
    async with http.post(
        _rest(sim, "contacts"), json={"account_id": 1, "wa_id": "9"}, headers=SB_KEY
    ) as resp:
        assert resp.status == 201
    sim.state.add_fault(upstream="whatsapp*", route="media_*", kind="status", status=404, count=2)
    async with http.get(f"{sim.urls['whatsapp']}/v19.0/m1", headers=WA_AUTH) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["type"] == "OAuthException"
    async with http.get(f"{sim.urls['whatsapp_media']}/media/m1", headers=WA_AUTH) as resp:
        assert resp.status == 404
    assert sim.state.fault_count(kind="status") == 3


async def test_delay_fault_answers_normally_after_the_delay(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="whatsapp", kind="delay", delay=0.3, count=1)
    started = time.monotonic()
    async with http.post(_send_url(sim), json=_wa_text("1555", "slow"), headers=WA_AUTH) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.3
    assert sim.state.delivery_count(to="1555") == 1


async def test_hang_fault_never_answers_until_the_client_gives_up(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="gemini", kind="hang", count=1)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            _gen_url(sim), json=_prompt("x"), headers=GEMINI_KEY, timeout=aiohttp.ClientTimeout(total=0.3)
        ):
            pass
    assert time.monotonic() - started < 2
    async with http.post(_gen_url(sim), json=_prompt("x"), headers=GEMINI_KEY) as resp:
        assert resp.status == 200


async def test_reset_before_drops_the_connection_without_processing(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_before", count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(_send_url(sim), json=_wa_text("1555", "lost"), headers=WA_AUTH) as resp:
            await resp.read()
    assert sim.state.delivery_count() == 0
    assert sim.state.request_count("whatsapp", "send_message") == 1


async def test_reset_after_processes_then_drops_the_connection(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_after", count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(_send_url(sim), json=_wa_text("1555", "ghost"), headers=WA_AUTH) as resp:
            await resp.read()
    assert sim.state.delivery_count(to="1555", body="ghost") == 1
    # a blind retry delivers a second time: exactly what the sidecar must not do for POSTs
    async with http.post(_send_url(sim), json=_wa_text("1555", "ghost"), headers=WA_AUTH) as resp:
        assert resp.status == 200
    assert sim.state.delivery_count(to="1555", body="ghost") == 2


async def test_aiohttp_retries_an_idempotent_request_once_after_a_reset(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="supabase", kind="reset_before", count=1)
    async with http.get(_rest(sim, "accounts"), headers=SB_KEY) as resp:
        assert resp.status == 200
    assert sim.state.request_count("supabase", "rest:accounts:GET") == 2
    sim.state.add_fault(upstream="supabase", kind="reset_before", count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(_rest(sim, "accounts"), headers=SB_KEY):
            pass


async def test_throttle_faults_use_provider_shapes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.state.add_fault(upstream="gemini", kind="throttle", retry_after=7, count=1)
    async with http.post(_gen_url(sim), json=_prompt("x"), headers=GEMINI_KEY) as resp:
        assert resp.status == 429
        error = (await resp.json())["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"] == "Resource has been exhausted"
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]

    sim.state.add_fault(upstream="whatsapp", kind="throttle", count=1)
    sim.state.add_fault(upstream="whatsapp", kind="throttle", variant="pair", count=1)
    async with http.post(_send_url(sim), json=_wa_text("1555", "x"), headers=WA_AUTH) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == 130429 and error["error_subcode"] == 2494055
    assert error["type"] == "OAuthException" and error["message"] == "(#130429) Rate limit hit"
    assert error["fbtrace_id"]
    async with http.post(_send_url(sim), json=_wa_text("1555", "x"), headers=WA_AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 131056
    assert sim.state.delivery_count() == 0


async def test_slow_stream_fault_trickles_an_intact_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.state.add_fault(upstream="gemini", kind="slow_stream", chunk_size=40, interval=0.03, count=1)
    started = time.monotonic()
    async with http.post(_gen_url(sim), json=_prompt("slowly please"), headers=GEMINI_KEY) as resp:
        raw = await resp.read()
    elapsed = time.monotonic() - started
    assert json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"] == "Echo: slowly please"
    assert elapsed >= 0.03 * (len(raw) // 40 - 1)


async def test_ratio_fault_is_deterministic_and_clear_stops_it(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.state.add_fault(upstream="*", route="auth_user", kind="status", status=502, ratio=0.5)
    url = f"{sim.urls['supabase']}/auth/v1/user"
    headers = {**SB_KEY, "Authorization": "Bearer user-token"}
    statuses = []
    for _ in range(4):
        async with http.get(url, headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 502, 200, 502]
    sim.state.clear_faults()
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="upstream"):
        Fault(upstream="openai", kind="status")
    with pytest.raises(ValueError, match="kind"):
        Fault.from_dict({"upstream": "gemini", "kind": "explode"})
    with pytest.raises(ValueError, match="ratio"):
        Fault(upstream="gemini", kind="status", ratio=2)


# -- control API ----------------------------------------------------------------------------------
async def test_control_api_faults_stats_and_reset(sim: Simulator, http: aiohttp.ClientSession) -> None:
    control = sim.urls["control"]
    fault = {"upstream": "whatsapp", "route": "send_message", "kind": "status", "status": 503, "count": 1}
    async with http.post(f"{control}/faults", json=fault) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["id"] >= 1 and created["remaining"] == 1
    async with http.post(f"{control}/faults", json={"upstream": "gemini", "kind": "nope"}) as resp:
        assert resp.status == 400
        assert "kind" in (await resp.json())["error"]
    async with http.get(f"{control}/faults") as resp:
        assert [f["id"] for f in await resp.json()] == [created["id"]]
    async with http.post(_send_url(sim), json=_wa_text("1555", "a"), headers=WA_AUTH) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["type"] == "OAuthException"
    async with http.post(_send_url(sim), json=_wa_text("1555", "b"), headers=WA_AUTH) as resp:
        assert resp.status == 200
    async with http.get(f"{control}/stats") as resp:
        stats = await resp.json()
    assert stats["requests"]["whatsapp"]["send_message"] == 2
    assert stats["faults_applied"]["whatsapp"] == {"send_message:status": 1}
    assert [d["body"] for d in stats["deliveries"]] == ["b"]
    async with http.get(f"{control}/deliveries", params={"to": "1555"}) as resp:
        assert [d["body"] for d in await resp.json()] == ["b"]
    async with http.post(
        f"{control}/faults", json=[fault, {**fault, "kind": "hang"}, {**fault, "kind": "delay"}]
    ) as resp:
        assert resp.status == 201
        first_id = (await resp.json())[0]["id"]
    async with http.delete(f"{control}/faults/{first_id}") as resp:
        assert resp.status == 200
    async with http.delete(f"{control}/faults/{first_id}") as resp:
        assert resp.status == 404
    async with http.delete(f"{control}/faults") as resp:
        assert (await resp.json())["removed"] == 2
    async with http.put(f"{control}/media/vid-1", json={"size": 1234, "mime_type": "video/mp4"}) as resp:
        assert resp.status == 200
    assert sim.state.media_info("vid-1").size == 1234
    async with http.patch(f"{control}/config", json={"stream_chunk_gap": 0.01}) as resp:
        assert resp.status == 200
    assert sim.state.config.stream_chunk_gap == 0.01
    async with http.delete(_rest(sim, "contacts"), params={"id": "eq.1"}, headers=SB_KEY) as resp:
        assert resp.status == 204
    async with http.post(f"{control}/reset") as resp:
        assert resp.status == 200
    assert sim.state.request_count() == 0 and sim.state.delivery_count() == 0
    assert len(sim.state.db.rows("contacts")) == 4 and len(sim.state.db.rows("messages")) == 7


# -- PostgREST engine (pure, no sockets) ----------------------------------------------------------
def test_postgrest_logic_filters_like_and_embedding() -> None:
    db = seed_database()
    rows, total = db.select(
        "messages",
        parse_query([("or", "(body.ilike.*OPEN*,and(direction.eq.out,account_id.eq.2))"), ("order", "id")]),
    )
    assert [r["id"] for r in rows] == [1, 2, 6] and total == 3
    rows, _ = db.select("messages", parse_query([("media_id", "not.is.null"), ("select", "id,media_id")]))
    assert rows == [{"id": 3, "media_id": "media-seed-1"}]
    query = parse_query([("select", "name,profile:bot_profiles(model),contacts(wa_id)"), ("id", "eq.1")])
    [account], _ = db.select("accounts", query)
    assert account == {
        "name": "Acme Bakery",
        "profile": [{"model": "gemini-2.0-flash"}],
        "contacts": [{"wa_id": "15550001001"}, {"wa_id": "15550001002"}],
    }
    [message], _ = db.select(
        "messages", parse_query([("select", "id,conversations(contact_id)"), ("id", "eq.5")])
    )
    assert message == {"id": 5, "conversations": {"contact_id": 3}}


def test_postgrest_upsert_merge_check_constraint_and_rollback() -> None:
    db = seed_database()
    merged = db.insert(
        "contacts",
        {"account_id": 1, "wa_id": "15550001001", "name": "Alice B."},
        resolution="merge",
        on_conflict=("account_id", "wa_id"),
    )
    assert merged[0]["id"] == 1 and merged[0]["name"] == "Alice B."
    with pytest.raises(PostgrestError) as excinfo:
        db.insert("messages", {"conversation_id": 1, "account_id": 1, "direction": "sideways"})
    assert excinfo.value.code == "23514"
    before = len(db.rows("contacts"))
    with pytest.raises(PostgrestError) as excinfo:
        db.insert("contacts", [{"account_id": 1, "wa_id": "a"}, {"account_id": 1, "wa_id": "b"}], single=True)
    assert excinfo.value.status == 406
    assert len(db.rows("contacts")) == before
    with pytest.raises(PostgrestError):
        db.insert("contacts", [{"account_id": 1, "wa_id": "c"}, {"account_id": 1, "wa_id": "c"}])
    assert len(db.rows("contacts")) == before
    deleted = db.delete("conversations", parse_query([("id", "eq.3")]))
    assert [r["id"] for r in deleted] == [3]
    assert not [m for m in db.rows("messages") if m["conversation_id"] == 3]

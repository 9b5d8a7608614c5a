"""The real client SDKs, pointed at the sidecar in front of the simulator, work unchanged.

That is the proof the simulator speaks the real APIs' shapes (paths, headers, bodies, errors) and the
sidecar passes them through. Test-only dependencies: skipped where they are not installed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.harness import Stack

genai = pytest.importorskip("google.genai")
postgrest = pytest.importorskip("postgrest")
from google.genai import errors as genai_errors  # noqa: E402
from google.genai import types  # noqa: E402

# google-genai uses aiohttp when it is installed, through a subclass aiohttp frowns upon.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
ANON = {"apikey": "sim-anon-key", "Authorization": "Bearer sim-anon-key"}


def gemini_client(stack: Stack) -> Any:
    assert stack.sidecar is not None
    # The key the SDK sends is replaced by the sidecar's (policy headers win): it lives in the sidecar only.
    options = types.HttpOptions(base_url=f"{stack.sidecar.url}/gemini")
    return genai.Client(api_key="not-the-real-key", http_options=options)


def rest_client(stack: Stack) -> Any:
    assert stack.sidecar is not None
    return postgrest.AsyncPostgrestClient(f"{stack.sidecar.url}/supabase/rest/v1", headers=ANON)


async def test_google_genai_generates_through_the_sidecar(stack: Stack) -> None:
    client = gemini_client(stack)
    response = await client.aio.models.generate_content(
        model="gemini-2.0-flash",
        contents="what are your opening hours?",
        config=types.GenerateContentConfig(system_instruction="You are a bakery bot.", max_output_tokens=200),
    )
    assert response.text == "Echo: what are your opening hours?"
    assert response.usage_metadata.total_token_count > 0
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert stack.sim.state.request_count("gemini", "generate") == 1


async def test_google_genai_streams_through_the_sidecar(stack: Stack) -> None:
    client = gemini_client(stack)
    chunks = [c.text async for c in await client.aio.models.generate_content_stream(
        model="gemini-2.0-flash", contents="one two three four five")]
    assert len(chunks) > 1
    assert "".join(chunks) == "Echo: one two three four five"


async def test_google_genai_sees_the_sidecars_refusal_as_a_server_error(stack: Stack) -> None:
    await stack.admin("POST", "/breakers/gemini/open")
    client = gemini_client(stack)
    with pytest.raises(genai_errors.ServerError) as raised:
        await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert raised.value.code == 503
    assert stack.sim.state.request_count("gemini") == 0


async def test_postgrest_reads_filters_and_orders_through_the_sidecar(stack: Stack) -> None:
    client = rest_client(stack)
    profile = await client.from_("bot_profiles").select("*").eq("account_id", 1).single().execute()
    assert profile.data["system_prompt"].startswith("You are the friendly assistant of Acme Bakery")
    messages = await (
        client.from_("messages").select("id, body, direction", count="exact")
        .eq("conversation_id", 1).order("created_at", desc=True).limit(2).execute()
    )
    assert [m["id"] for m in messages.data] == [3, 2]
    assert messages.count == 3
    embedded = await client.from_("conversations").select("id, contacts(name)").eq("id", 1).execute()
    assert embedded.data == [{"id": 1, "contacts": {"name": "Alice"}}]


async def test_postgrest_writes_upserts_and_errors_through_the_sidecar(stack: Stack) -> None:
    client = rest_client(stack)
    inserted = await client.from_("contacts").insert({"account_id": 1, "wa_id": "15550004242", "name": "Eve"}).execute()
    [row] = inserted.data
    upserted = await (
        client.from_("contacts")
        .upsert({"account_id": 1, "wa_id": "15550004242", "name": "Eve B."}, on_conflict="account_id,wa_id")
        .execute()
    )
    assert upserted.data[0]["id"] == row["id"] and upserted.data[0]["name"] == "Eve B."
    updated = await client.from_("accounts").update({"name": "Acme Bakery & Cafe"}).eq("id", 1).execute()
    assert updated.data[0]["name"] == "Acme Bakery & Cafe"
    with pytest.raises(postgrest.APIError) as raised:
        await client.from_("contacts").insert({"account_id": 1, "wa_id": "15550001001"}).execute()
    assert raised.value.code == "23505"
    await client.from_("contacts").delete().eq("id", row["id"]).execute()
    assert not [c for c in stack.sim.state.db.rows("contacts") if c["id"] == row["id"]]

"""The webhook as the internet reaches it: signed bodies of any size, shape, depth and number are answered
2xx or 4xx, never 5xx. Hand-picked cases first, then hypothesis properties over one stack shared by examples."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbox_backend import bounded_json
from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, signature, text_message
from tests.backend.harness import BOT_OFF_PHONE_ID, USER, MakeStack, Stack, ThreadedStack, threaded_stack

DEAVE = "15550003001"  # the bot-off account's contact: storing a message there starts no reply


async def post_signed(stack: Stack, raw: bytes) -> tuple[int, Any]:
    headers = {SIGNATURE_HEADER: signature(raw, stack.state.settings.whatsapp_app_secret)}
    async with stack.http.post(f"{stack.url}/webhook", data=raw, headers=headers) as response:
        return response.status, await response.json()


def bot_off_message(**fields: Any) -> dict[str, Any]:
    """A webhook for the bot-off account with the message's fields replaced by `fields`."""
    payload = message_webhook(text_message("hello"), wa_id=DEAVE, phone_number_id=BOT_OFF_PHONE_ID)
    payload["entry"][0]["changes"][0]["value"]["messages"][0].update(fields)
    return payload


async def test_a_signed_body_nested_100000_deep_is_400_not_a_traceback(stack: Stack) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        status, body = await post_signed(stack, raw)
        assert (status, body["error"]) == (400, "invalid_json")
    assert stack.sim.state.request_count("supabase") == 0


async def test_numbers_that_are_not_finite_are_400(stack: Stack) -> None:
    for number in ("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "9" * 5000):
        raw = json.dumps(bot_off_message(timestamp="TS")).replace('"TS"', number).encode()
        status, body = await post_signed(stack, raw)
        assert (status, body["error"]) == (400, "invalid_json"), number


async def test_absurd_timestamps_are_ignored_the_message_is_stored_at_its_receipt(stack: Stack) -> None:
    weird: list[Any] = ["1e400", 10**20, -1, 1.5, True, "NaN", "\uff11\uff12\uff13", None, {"s": 1}, [1], str(10**20)]
    for i, timestamp in enumerate(weird):
        status, body = await stack.signed_webhook(bot_off_message(timestamp=timestamp, id=f"wamid.TS{i}"))
        assert (status, body["stored"]) == (200, 1), timestamp
        [row] = stack.rows("messages", wa_message_id=f"wamid.TS{i}")
        assert abs(datetime.fromisoformat(row["created_at"]).timestamp() - time.time()) < 3600


async def test_malformed_or_non_utf8_json_is_400(stack: Stack) -> None:
    for raw in (b'{"entry": [', b"", b"\xff\xfe{}", b'{"a": "\xc3"}', b"{'a': 1}", b"[1,]"):
        status, body = await post_signed(stack, raw)
        assert (status, body["error"]) == (400, "invalid_json"), raw


async def test_odd_shapes_inside_a_valid_payload_are_skipped_not_500(stack: Stack) -> None:
    payload = bot_off_message(id="wamid.SHAPES")
    value = payload["entry"][0]["changes"][0]["value"]
    value["contacts"] = [{"wa_id": DEAVE, "profile": "not an object"}, "x", {"profile": {"name": {"a": 1}}}]
    assert (await stack.signed_webhook(payload)) == (200, {"stored": 1, "duplicate": 0, "unknown_account": 0})
    value["metadata"] = ["not", "an", "object"]
    assert (await stack.signed_webhook(payload)) == (200, {"stored": 0, "duplicate": 0, "unknown_account": 0})


async def test_a_body_beyond_max_body_is_413_and_one_within_it_is_read(make_stack: MakeStack) -> None:
    stack = await make_stack(max_body=4096)
    small = bot_off_message(id="wamid.SMALL")
    assert (await stack.signed_webhook(small))[0] == 200
    large = bot_off_message(id="wamid.LARGE", text={"body": "x" * 5000})
    status, body = await stack.signed_webhook(large)
    assert (status, body["error"]) == (413, "body_too_large")
    assert stack.rows("messages", wa_message_id="wamid.LARGE") == []
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "y" * 5000})
    assert (status, body["error"]) == (413, "body_too_large")


async def test_the_signature_covers_the_exact_bytes_parsed(stack: Stack) -> None:
    raw = json.dumps(bot_off_message(id="wamid.EXACT")).encode()
    headers = {SIGNATURE_HEADER: signature(raw, stack.state.settings.whatsapp_app_secret)}
    # the same JSON, other bytes (one more space): the signature is of the bytes, not of the value
    async with stack.http.post(f"{stack.url}/webhook", data=raw + b" ", headers=headers) as response:
        assert response.status == 401
    async with stack.http.post(f"{stack.url}/webhook", data=raw, headers=headers) as response:
        assert response.status == 200
    assert len(stack.rows("messages", wa_message_id="wamid.EXACT")) == 1


async def test_the_user_api_bounds_its_json_bodies_the_same_way(stack: Stack) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"conversation_id": 1, "text": NaN}', b"\xff"):
        async with stack.http.post(f"{stack.url}/messages", data=raw, headers=USER) as response:
            assert (response.status, (await response.json())["error"]) == (400, "invalid_json")
    assert stack.sim.state.delivery_count() == 0


# -- properties ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared() -> Iterator[ThreadedStack]:
    with threaded_stack() as threaded:
        yield threaded


def post(shared: ThreadedStack, raw: bytes) -> tuple[int, Any]:
    return shared.run(post_signed(shared.stack, raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
MESSAGE_FIELDS = ("timestamp", "from", "id", "type", "text", "image")


@given(body=st.binary(max_size=400))
def test_any_signed_bytes_are_answered_2xx_or_4xx(shared: ThreadedStack, body: bytes) -> None:
    status, _ = post(shared, body)
    assert status < 500


@given(payload=json_values)
def test_any_signed_json_value_is_answered_2xx_or_4xx(shared: ThreadedStack, payload: Any) -> None:
    status, _ = post(shared, json.dumps(payload).encode())
    assert status < 500


@given(fields=st.dictionaries(st.sampled_from(MESSAGE_FIELDS), json_values, min_size=1),
       metadata=json_values, contacts=json_values)
def test_a_real_payload_with_any_fields_replaced_is_answered_200(
    shared: ThreadedStack, fields: dict[str, Any], metadata: Any, contacts: Any
) -> None:
    payload = bot_off_message(**fields)
    with_odd_envelope = bot_off_message(**fields)
    with_odd_envelope["entry"][0]["changes"][0]["value"].update(metadata=metadata, contacts=contacts)
    for raw in (json.dumps(payload).encode(), json.dumps(with_odd_envelope).encode()):
        status, body = post(shared, raw)
        # well-formed JSON is read whatever its fields hold; only nesting beyond the bound is refused
        assert status == 200 or (status == 400 and bounded_json.depth(raw.decode()) > bounded_json.MAX_DEPTH), body


@given(depth=st.integers(min_value=1, max_value=3000), opener=st.sampled_from(["[", '{"k":']))
def test_nesting_up_to_the_bound_is_read_and_beyond_it_is_400(shared: ThreadedStack, depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    status, body = post(shared, raw)
    assert status == (200 if depth <= bounded_json.MAX_DEPTH else 400), body


@given(text=st.text(max_size=60))
def test_depth_ignores_brackets_inside_strings(text: str) -> None:
    assert bounded_json.depth(json.dumps([text, {"a": [text]}])) == 3

"""The backend under the sidecar's pacing (`rate_limit`), on the real stack: a send refused `rate_limited` is a 503
with Retry-After like `throttled`; a background bot reply refused so is sent once more within its budget, or
counted failed; never twice."""

from __future__ import annotations

import asyncio

from tests.backend.harness import ALICE, USER, MakeStack, Stack, eventually

# One message a second to each recipient, refused at once beyond it (no `wait`): the backend's own retry is seen.
PAIR_PER_SECOND = {"upstreams": {"whatsapp": {"routes": [
    {"name": "send_message", "match": "POST /v19.0/{phone_id}/messages", "retry": {"attempts": 3},
     "rate_limit": {"wait": "0s", "limits": [{"name": "pair", "key": "{phone_id}:{body.to}", "rate": "1/s",
                                              "burst": 1}]}},
    {"name": "media_info", "match": "GET /v19.0/*"},
]}}}


def sends(stack: Stack) -> int:
    return stack.sim.state.request_count("whatsapp", "send_message")


def replies(stack: Stack, status: str) -> list[dict[str, object]]:
    return stack.rows("messages", conversation_id=1, direction="out", status=status)


async def test_a_rate_limited_send_is_503_with_retry_after_like_throttled(make_stack: MakeStack) -> None:
    stack = await make_stack(PAIR_PER_SECOND)
    message = {"conversation_id": 1, "text": "one"}
    status, _, _ = await stack.call("POST", "/messages", headers=USER, json_body=message)
    assert status == 201
    status, body, headers = await stack.call("POST", "/messages", headers=USER, json_body={**message, "text": "two"})
    assert (status, body["error"], headers["Retry-After"]) == (503, "whatsapp_unavailable", "1")
    assert sends(stack) == 1  # the refused one never reached WhatsApp
    assert [r["body"] for r in replies(stack, "failed")] == ["two"]  # a user's request is not retried for it


async def test_a_rate_limited_bot_reply_is_sent_once_more_within_its_budget_and_only_once(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(PAIR_PER_SECOND, reply_retry_for=10.0)
    for n in range(2):  # two deliveries, two replies to Alice at once: the second's turn is a second away
        assert (await stack.webhook(f"question {n}", message_id=f"wamid.PACE{n}"))[0] == 200
    await eventually(lambda: stack.sim.state.delivery_count(to=ALICE) == 2, message="both replies delivered")
    await eventually(lambda: len(replies(stack, "sent")) == 2)
    await asyncio.sleep(0.5)
    assert stack.sim.state.delivery_count(to=ALICE) == 2 and sends(stack) == 2  # none sent twice
    assert replies(stack, "failed") == []
    assert stack.metric("inbox_bot_reply_failures_total", {"stage": "send"}) == 0
    deliveries = stack.sim.state.deliveries_to(ALICE)
    assert len({d.message_id for d in deliveries}) == 2


async def test_a_rate_limited_bot_reply_past_its_budget_is_counted_failed_and_not_sent(make_stack: MakeStack) -> None:
    stack = await make_stack(PAIR_PER_SECOND, reply_retry_for=0.5)  # less than the 1 s Retry-After
    for n in range(2):
        assert (await stack.webhook(f"question {n}", message_id=f"wamid.LATE{n}"))[0] == 200
    await eventually(lambda: stack.metric("inbox_bot_reply_failures_total", {"stage": "send"}) == 1)
    await eventually(lambda: len(replies(stack, "failed")) == 1)
    await asyncio.sleep(1.5)  # past the Retry-After: nothing more goes out
    assert stack.sim.state.delivery_count(to=ALICE) == 1 and sends(stack) == 1

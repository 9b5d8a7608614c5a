"""Who may read and change what, route by route, and ids that reach PostgREST: through the real stack.

The user owns accounts 1 and 3; account 2 (conversation 3, messages 5 and 6) is the admin's. Every route given
another account's id answers exactly what it answers for an id that does not exist, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from inbox_backend.database import eq
from inbox_backend.egress import Call, call_url
from inbox_backend.errors import ApiError
from inbox_backend.inputs import positive_int
from inbox_backend.settings import Settings, Upstream
from inbox_backend.simulator.postgrest import Filter, parse_query
from inbox_backend.webhook_payload import media_message, message_webhook
from tests.backend.harness import USER, Stack, ThreadedStack, threaded_stack

MISSING = 999_999
OTHERS = {"account": 2, "conversation": 3, "message": 5}
ABSENT = dict.fromkeys(OTHERS, MISSING)
OTHERS_PHONE_ID = "106540352242923"  # account 2's
CAROL = "15550002001"  # account 2's contact

Ids = dict[str, int]
Request = tuple[str, str, Any]
# Every route that takes an id: method, path, JSON body, from the ids of the rows it names.
ROUTES: dict[str, Callable[[Ids], Request]] = {
    "bot_profile": lambda ids: ("GET", f"/bot/profile?account_id={ids['account']}", None),
    "bot_reply": lambda ids: ("POST", "/bot/reply", {"conversation_id": ids["conversation"]}),
    "bot_reply_send": lambda ids: ("POST", "/bot/reply", {"conversation_id": ids["conversation"], "send": True}),
    "post_message": lambda ids: ("POST", "/messages", {"conversation_id": ids["conversation"], "text": "mine now"}),
    "get_message": lambda ids: ("GET", f"/messages/{ids['message']}", None),
    "message_media": lambda ids: ("GET", f"/messages/{ids['message']}/media", None),
    "patch_account": lambda ids: ("PATCH", f"/accounts/{ids['account']}", {"name": "mine now"}),
}


async def answer(stack: Stack, request: Request) -> tuple[int, Any]:
    method, path, body = request
    status, data, _ = await stack.call(method, path, headers=USER, json_body=body)
    if isinstance(data, dict):
        data.pop("request_id", None)  # differs on every request by design
    return status, data


async def with_media_in_the_other_account(stack: Stack) -> int:
    """A message with media in account 2 (so the media route has something to refuse): its id."""
    stack.sim.state.set_media("media-carol", 1000)
    payload = message_webhook(media_message("media-carol"), wa_id=CAROL, phone_number_id=OTHERS_PHONE_ID)
    assert (await stack.signed_webhook(payload))[0] == 200
    [row] = stack.rows("messages", media_id="media-carol")
    return int(row["id"])


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_another_accounts_ids_are_answered_as_ids_that_do_not_exist_and_change_nothing(
    stack: Stack, route: str
) -> None:
    others = {**OTHERS, "message": await with_media_in_the_other_account(stack)}
    rows_before = {t: stack.rows(t) for t in ("accounts", "messages", "conversations")}
    sent_before = stack.sim.state.request_count("gemini") + stack.sim.state.delivery_count()
    theirs = await answer(stack, ROUTES[route](others))
    absent = await answer(stack, ROUTES[route](ABSENT))
    assert theirs == absent == (404, {"error": "not_found"})
    assert {t: stack.rows(t) for t in rows_before} == rows_before
    assert stack.sim.state.request_count("gemini") + stack.sim.state.delivery_count() == sent_before
    assert stack.sim.state.request_count("whatsapp_media") == 0


async def test_the_owner_is_still_served_on_each_route(stack: Stack) -> None:
    stack.sim.state.set_media("media-seed-1", 1000)
    mine = {"account": 1, "conversation": 1, "message": 3}
    for route in sorted(ROUTES):
        status, _ = await answer(stack, ROUTES[route](mine))
        assert status in (200, 201), route


HOSTILE_IDS = ["1&select=*", "1,or(id.gt.0)", "eq.1", "1)", "not.eq.1", "1 ", " 1", "+1", "0", "-1", "1.0", "1e3",
               "\uff11", "\u00b2", "1" * 19, "1;select", "1%26account_id=2", "1#", "*"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
async def test_hostile_ids_are_refused_400_before_any_query(stack: Stack, hostile: str) -> None:
    encoded = quote(hostile, safe="")
    queries_before = stack.sim.state.request_count("supabase", "rest:messages:GET")
    for method, path, body in [
        ("GET", f"/messages/{encoded}", None),
        ("GET", f"/messages/{encoded}/media", None),
        ("GET", f"/bot/profile?account_id={encoded}", None),
        ("PATCH", f"/accounts/{encoded}", {"name": "x"}),
        ("POST", "/messages", {"conversation_id": hostile, "text": "x"}),
        ("POST", "/bot/reply", {"conversation_id": hostile}),
    ]:
        status, data, _ = await stack.call(method, path, headers=USER, json_body=body)
        assert (status, data["error"]) == (400, "invalid_request"), (method, path)
    assert stack.sim.state.request_count("supabase", "rest:messages:GET") == queries_before


async def test_a_repeated_query_id_is_refused_not_resolved_to_one_of_them(stack: Stack) -> None:
    status, data, _ = await stack.call("GET", "/bot/profile?account_id=1&account_id=2", headers=USER)
    assert (status, data["error"]) == (400, "invalid_request")


async def test_webhook_ids_that_are_no_whatsapp_ids_never_reach_a_query(stack: Stack) -> None:
    for phone_number_id in ("106540352242922&select=*", "106540352242922,or(id.gt.0)", "eq.106540352242922"):
        status, body = await stack.webhook("hi", phone_number_id=phone_number_id)
        assert (status, body) == (200, {"stored": 0, "duplicate": 0, "unknown_account": 0})
    status, body = await stack.webhook("hi", wa_id="15550001001&wa_id=eq.x")
    assert (status, body["stored"]) == (200, 0)
    assert stack.sim.state.request_count("supabase") == 0


async def test_a_stored_media_id_that_is_no_media_id_never_becomes_a_graph_path(stack: Stack) -> None:
    # A row written before ids were checked: its media id would climb out of /v19.0/ on Graph.
    [row] = [r for r in stack.sim.state.db.rows("messages") if r["id"] == 1]
    row["media_id"] = "../106540352242922/messages"
    assert stack.rows("messages", id=1)[0]["media_id"] == "../106540352242922/messages"
    status, data, _ = await stack.call("GET", "/messages/1/media", headers=USER)
    assert (status, data["error"]) == (404, "no_media")
    assert stack.sim.state.request_count("whatsapp") == 0


# -- properties ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared() -> Iterator[ThreadedStack]:
    with threaded_stack() as threaded:
        yield threaded


@given(text=st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,20}\Z"))
def test_any_id_text_is_refused_or_read_as_the_integer_it_spells(text: str) -> None:
    try:
        value = positive_int(text, "id")
    except ApiError as exc:
        assert exc.status == 400
        return
    assert text.isascii() and text.isdigit() and int(text) == value


@given(value=st.text(max_size=40) | st.integers())
def test_any_filter_value_is_refused_or_reaches_postgrest_as_one_literal(value: str | int) -> None:
    try:
        condition = eq(value)
    except ValueError:
        return
    call = Call(Upstream.SUPABASE, "GET", "/rest/v1/accounts", params={"select": "*", "id": condition})
    url = call_url(Settings().base_url(Upstream.SUPABASE), call)  # what the backend sends
    query = parse_query(URL(str(url)).query.items())  # as the simulator's PostgREST reads the wire
    assert query.conditions == [Filter("id", "eq", str(value), False)]


@given(text=st.text(min_size=1, max_size=30))
def test_any_path_id_is_answered_2xx_or_4xx_and_only_ever_names_that_row(shared: ThreadedStack, text: str) -> None:
    status, data = shared.run(answer(shared.stack, ("GET", f"/messages/{quote(text, safe='')}", None)))
    assert status in (200, 400, 404)
    if status == 200:
        assert data["message"]["id"] == int(text) and data["account"]["owner_id"] is not None
    status, data = shared.run(answer(shared.stack, ("GET", f"/bot/profile?account_id={quote(text, safe='')}", None)))
    assert status in (200, 400, 404)
    if status == 200:
        assert data["account_id"] == int(text)

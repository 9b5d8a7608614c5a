"""stale-while-revalidate (RFC 5861 §3): within the window a stale entry is served at once (UPDATING) while one
background refresh per key goes upstream with its validators; what comes back replaces or refreshes the entry,
a failure leaves it. Outside the window, or when the caller asks for freshness of its own, it is revalidated in
line, as before."""

from __future__ import annotations

import asyncio
import time

from tests.proxy.test_cache import call, policy, state
from tests.support.upstream import delay, respond, until

SWR = {"Cache-Control": "max-age=1, stale-while-revalidate=30", "ETag": '"v1"'}
URL = "/supabase/rest/v1/bot_profiles"


async def stored_then_stale(upstream, make_sidecar, client):
    upstream.script(respond(200, b"first", SWR))
    sc = await make_sidecar(policy(upstream))
    assert state(await call(client, sc.url + URL)) == "MISS"
    await asyncio.sleep(1.1)  # past max-age, well within stale-while-revalidate
    return sc


async def test_a_stale_entry_is_served_at_once_and_refreshed_once_in_the_background(upstream, make_sidecar, client):
    sc = await stored_then_stale(upstream, make_sidecar, client)
    upstream.script(delay(0.6, respond(200, b"second", {**SWR, "ETag": '"v2"'})))
    started = time.monotonic()
    replies = await asyncio.gather(*(call(client, sc.url + URL) for _ in range(4)))
    assert time.monotonic() - started < 0.5  # nobody waited for the refresh
    for status, headers, body in replies:
        assert (status, body, headers["X-Egress-Cache"]) == (200, b"first", "UPDATING")
        assert headers["Cache-Status"].startswith("egress; hit; ttl=-")  # a hit, on a stale entry
    await until(lambda: len(upstream.requests) == 2)
    assert upstream.requests[1].headers.get("If-None-Match") == '"v1"'  # the served entry's validator
    await asyncio.sleep(0.8)  # the refresh's answer arrives and is stored
    status, headers, body = await call(client, sc.url + URL)
    assert (body, headers["X-Egress-Cache"]) == (b"second", "HIT")
    assert len(upstream.requests) == 2  # one refresh for five requests


async def test_a_304_to_the_refresh_makes_the_entry_fresh_again(upstream, make_sidecar, client):
    sc = await stored_then_stale(upstream, make_sidecar, client)
    upstream.script(respond(304, b"", SWR))
    assert state(await call(client, sc.url + URL)) == "UPDATING"
    await until(lambda: len(upstream.requests) == 2)
    await asyncio.sleep(0.2)
    status, headers, body = await call(client, sc.url + URL)
    assert (status, body, headers["X-Egress-Cache"]) == (200, b"first", "HIT")


async def test_a_failed_refresh_leaves_the_entry_and_the_next_request_tries_again(upstream, make_sidecar, client):
    sc = await stored_then_stale(upstream, make_sidecar, client)
    upstream.script(respond(500, b"down"), respond(200, b"second", SWR))
    assert state(await call(client, sc.url + URL)) == "UPDATING"
    await until(lambda: len(upstream.requests) == 2)
    await asyncio.sleep(0.2)
    status, headers, body = await call(client, sc.url + URL)
    assert (status, body, headers["X-Egress-Cache"]) == (200, b"first", "UPDATING")  # the 500 was not stored
    await until(lambda: len(upstream.requests) == 3)
    await asyncio.sleep(0.2)
    assert (await call(client, sc.url + URL))[2] == b"second"


async def test_past_the_window_or_when_the_caller_asks_for_freshness_it_is_revalidated_in_line(
    upstream, make_sidecar, client
):
    upstream.script(respond(200, b"first", {"Cache-Control": "max-age=0, stale-while-revalidate=1", "ETag": '"v1"'}),
                    respond(200, b"second", SWR), respond(200, b"third", SWR))
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    await asyncio.sleep(1.1)  # past stale-while-revalidate too
    status, headers, body = await call(client, sc.url + URL)
    assert status == 200
    assert body == b"second" and headers["X-Egress-Cache"] != "UPDATING"
    await asyncio.sleep(1.1)  # "second" is stale now, within its window: but this caller wants max-age=0
    _, headers, body = await call(client, sc.url + URL, headers={"Cache-Control": "max-age=0"})
    assert body == b"third" and headers["X-Egress-Cache"] != "UPDATING"


async def test_a_refresh_in_flight_at_a_stop_is_cancelled(upstream, make_sidecar, client):
    sc = await stored_then_stale(upstream, make_sidecar, client)
    upstream.script(delay(30, respond(200, b"never")))
    assert state(await call(client, sc.url + URL)) == "UPDATING"
    await until(lambda: len(upstream.requests) == 2)
    refreshes = list(sc.runtime.cache._refreshes.values())
    assert len(refreshes) == 1
    await sc.runtime.cache.close()
    await asyncio.sleep(0)
    assert refreshes[0].cancelled() or refreshes[0].done()


async def test_a_caller_directive_that_asks_nothing_of_freshness_still_gets_the_stale_entry(
    upstream, make_sidecar, client
):
    # The public cache test suite's client sends `Cache-Control: nothing-to-see-here` on every request.
    sc = await stored_then_stale(upstream, make_sidecar, client)
    upstream.script(respond(200, b"second", SWR))
    reply = await call(client, sc.url + URL, headers={"Cache-Control": "nothing-to-see-here"})
    assert (reply[2], state(reply)) == (b"first", "UPDATING")

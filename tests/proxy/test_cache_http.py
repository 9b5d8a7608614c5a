"""The cache as an HTTP cache (RFC 9111, RFC 5861, RFC 9211), through a real sidecar and a real loopback origin:
freshness from the origin's headers with the route's ttl as the fallback, Age, revalidation, callers'
conditional requests, Cache-Status, invalidation by unsafe methods, heuristic statuses and request directives."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time

import aiohttp
import pytest
from aiohttp import web

from tests.proxy.test_cache import call, policy, state
from tests.support.upstream import FaultyUpstream, Recorded, _read, numbered, respond

URL = "/supabase/rest/v1/bot_profiles"


def validating(etag: str = '"v1"', headers: dict[str, str] | None = None, not_modified: dict[str, str] | None = None):
    """An origin with an ETag: 304 to a matching If-None-Match (with `not_modified` headers), else 200 `1`, `2`..."""
    count = itertools.count(1)

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, **(not_modified or headers or {})})
        return web.Response(text=str(next(count)), headers={"ETag": etag, **(headers or {})})

    return behaviour


async def twice(client: aiohttp.ClientSession, url: str, **kwargs: dict[str, str]):
    return await call(client, url, **kwargs), await call(client, url, **kwargs)  # type: ignore[arg-type]


# -- freshness from the origin, the route's ttl as the fallback ---------------------------------------------


async def test_max_age_zero_is_stored_but_never_a_hit(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=0"})
    sc = await make_sidecar(policy(upstream))
    _, second = await twice(client, sc.url + URL)
    assert (second[2], state(second)) == (b"2", "MISS")


async def test_the_origins_max_age_wins_over_the_routes_ttl(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=60"})
    sc = await make_sidecar(policy(upstream, "{ttl: 200ms}"))
    await call(client, sc.url + URL)
    await asyncio.sleep(0.3)
    reply = await call(client, sc.url + URL)
    assert (reply[2], state(reply)) == (b"1", "HIT")


async def test_s_maxage_wins_over_max_age_in_a_shared_cache(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=60, s-maxage=0"})
    sc = await make_sidecar(policy(upstream))
    _, second = await twice(client, sc.url + URL)
    assert (second[2], state(second)) == (b"2", "MISS")


async def test_an_expires_in_the_past_is_stale_and_one_in_the_future_fresh(upstream, make_sidecar, client):
    now = time.time()
    past, future = email.utils.formatdate(now - 60, usegmt=True), email.utils.formatdate(now + 60, usegmt=True)
    upstream.default = numbered(headers={"Expires": past})
    sc = await make_sidecar(policy(upstream))
    assert state((await twice(client, sc.url + URL))[1]) == "MISS"
    upstream.default = numbered(headers={"Expires": future})
    _, second = await twice(client, sc.url + URL + "?f")
    assert state(second) == "HIT"


async def test_an_origin_silent_about_freshness_gets_the_routes_ttl(upstream, make_sidecar, client):
    upstream.default = numbered()  # what PostgREST and the Graph API send: no caching headers at all
    sc = await make_sidecar(policy(upstream, "{ttl: 300ms}"))
    assert state((await twice(client, sc.url + URL))[1]) == "HIT"
    await asyncio.sleep(0.4)
    assert state(await call(client, sc.url + URL)) == "MISS"


async def test_override_lets_the_routes_ttl_win_over_the_origins_max_age(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=0, must-revalidate"})
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, override: true}"))
    assert state((await twice(client, sc.url + URL))[1]) == "HIT"


async def test_an_origins_age_shortens_what_is_left_of_its_freshness(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=60", "Age": "60"})
    sc = await make_sidecar(policy(upstream))
    assert state((await twice(client, sc.url + URL))[1]) == "MISS"


# -- Age ----------------------------------------------------------------------------------------------------


async def test_age_adds_the_origins_age_to_the_time_spent_in_the_sidecar(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=600", "Age": "30"})
    sc = await make_sidecar(policy(upstream))
    first = await call(client, sc.url + URL)
    assert first[1]["Age"] == "30"  # a miss passes the origin's Age through
    await asyncio.sleep(1.1)
    hit = await call(client, sc.url + URL)
    assert state(hit) == "HIT"
    assert 31 <= int(hit[1]["Age"]) <= 33


# -- revalidation upstream -----------------------------------------------------------------------------------


async def test_a_stale_entry_is_revalidated_and_a_304_serves_the_stored_body(upstream, make_sidecar, client):
    upstream.default = validating(headers={"Cache-Control": "max-age=0", "X-Version": "old"},
                                  not_modified={"Cache-Control": "max-age=60", "X-Version": "new"})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    revalidated = await call(client, sc.url + URL)
    assert upstream.requests[1].headers["If-None-Match"] == '"v1"'
    assert (revalidated[0], revalidated[2], state(revalidated)) == (200, b"1", "REVALIDATED")
    assert revalidated[1]["X-Version"] == "new"  # §3.2: the 304's headers replace the stored ones
    hit = await call(client, sc.url + URL)  # ... its max-age=60 among them
    assert (hit[2], state(hit), hit[1]["X-Version"]) == (b"1", "HIT", "new")
    assert len(upstream.requests) == 2


async def test_last_modified_is_revalidated_with_if_modified_since(upstream, make_sidecar, client):
    modified = email.utils.formatdate(time.time() - 3600, usegmt=True)
    upstream.default = respond(200, b"body", {"Cache-Control": "no-cache", "Last-Modified": modified})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    upstream.default = respond(304, b"", {"Cache-Control": "no-cache"})
    reply = await call(client, sc.url + URL)
    assert upstream.requests[1].headers["If-Modified-Since"] == modified
    assert (reply[0], reply[2], state(reply)) == (200, b"body", "REVALIDATED")


async def test_a_200_to_a_revalidation_replaces_the_entry(upstream, make_sidecar, client):
    upstream.default = validating(headers={"Cache-Control": "max-age=0"})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    upstream.default = respond(200, b"changed", {"ETag": '"v2"', "Cache-Control": "max-age=60"})
    changed = await call(client, sc.url + URL)
    hit = await call(client, sc.url + URL)
    assert (changed[2], state(changed)) == (b"changed", "MISS")
    assert (hit[2], state(hit), hit[1]["ETag"]) == (b"changed", "HIT", '"v2"')


async def test_a_no_cache_answer_is_revalidated_on_every_use(upstream, make_sidecar, client):
    upstream.default = validating(headers={"Cache-Control": "no-cache, max-age=600"})
    sc = await make_sidecar(policy(upstream))
    replies = [await call(client, sc.url + URL) for _ in range(3)]
    assert [state(r) for r in replies] == ["MISS", "REVALIDATED", "REVALIDATED"]
    assert len(upstream.requests) == 3


# -- stale: never without revalidation, except stale_if_error (with the breaker) and the origin's stale-* --------


async def test_must_revalidate_forbids_the_routes_stale_if_error(upstream, make_sidecar, client):
    upstream.script(numbered(headers={"Cache-Control": "max-age=0, must-revalidate"}), respond(503, b"down"))
    sc = await make_sidecar(policy(upstream, "{ttl: 300ms, stale_if_error: 1h}"))
    await call(client, sc.url + URL)
    reply = await call(client, sc.url + URL)
    assert (reply[0], state(reply)) == (503, "MISS")


async def test_the_origins_stale_if_error_serves_stale_for_a_5xx(upstream, make_sidecar, client):
    upstream.script(numbered(headers={"Cache-Control": "max-age=0, stale-if-error=60"}), respond(503, b"down"))
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    reply = await call(client, sc.url + URL)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")
    assert reply[1]["Cache-Status"].startswith("egress; fwd=stale; fwd-status=503; ttl=-")


async def test_an_open_breaker_still_serves_a_stale_entry_of_an_origin_silent_upstream(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, "{ttl: 200ms, stale_if_error: 1h}"))
    await call(client, sc.url + URL)
    await asyncio.sleep(0.3)
    async with client.post(sc.admin + "/breakers/supabase/open") as resp:
        assert resp.status == 200
    reply = await call(client, sc.url + URL)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")


# -- callers' conditional requests ---------------------------------------------------------------------------


async def test_a_callers_if_none_match_is_answered_304_from_a_fresh_entry(upstream, make_sidecar, client):
    upstream.default = validating(headers={"Cache-Control": "max-age=60"})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    matched = await call(client, sc.url + URL, headers={"If-None-Match": 'W/"v1", "other"'})
    other = await call(client, sc.url + URL, headers={"If-None-Match": '"v0"'})
    assert (matched[0], matched[2], state(matched)) == (304, b"", "HIT")
    assert matched[1]["ETag"] == '"v1"' and matched[1]["Cache-Control"] == "max-age=60"
    assert "Content-Length" not in matched[1] or matched[1]["Content-Length"] == "0"
    assert (other[0], other[2]) == (200, b"1")
    assert len(upstream.requests) == 1


async def test_a_callers_if_modified_since_is_answered_304_from_a_fresh_entry(upstream, make_sidecar, client):
    modified = email.utils.formatdate(time.time() - 3600, usegmt=True)
    upstream.default = respond(200, b"body", {"Last-Modified": modified})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    since = await call(client, sc.url + URL, headers={"If-Modified-Since": email.utils.formatdate(usegmt=True)})
    before = await call(client, sc.url + URL,
                        headers={"If-Modified-Since": email.utils.formatdate(time.time() - 7200, usegmt=True)})
    assert (since[0], before[0], before[2]) == (304, 200, b"body")
    assert len(upstream.requests) == 1


# -- Cache-Status ---------------------------------------------------------------------------------------------


async def test_cache_status_says_what_the_cache_did(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=60"})
    sc = await make_sidecar(policy(upstream))
    miss, hit = await twice(client, sc.url + URL)
    assert miss[1]["Cache-Status"].startswith("egress; fwd=uri-miss; fwd-status=200; stored; ttl=")
    assert hit[1]["Cache-Status"].startswith("egress; hit; ttl=")
    assert 58 <= int(hit[1]["Cache-Status"].rsplit("=", 1)[1]) <= 60
    bypass = await call(client, sc.url + URL, headers={"Cache-Control": "no-store"})
    assert bypass[1]["Cache-Status"] == "egress; fwd=bypass; fwd-status=200"


# -- invalidation ---------------------------------------------------------------------------------------------


async def test_an_unknown_unsafe_method_invalidates_and_a_safe_one_does_not(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    await call(client, sc.url + URL, "OPTIONS")
    assert state(await call(client, sc.url + URL)) == "HIT"
    upstream.script(respond(200, b"done"))
    # A method the sidecar names nowhere (aiohttp's parser refuses tokens it does not know, so not FROBNICATE).
    assert (await call(client, sc.url + URL, "PROPPATCH"))[0] == 200
    assert state(await call(client, sc.url + URL)) == "MISS"


async def test_a_3xx_answer_to_a_write_invalidates_too(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    upstream.script(respond(303, b"", {"Location": "/elsewhere"}))
    async with client.post(sc.url + URL, allow_redirects=False) as resp:
        assert resp.status == 303
    assert state(await call(client, sc.url + URL)) == "MISS"


async def test_a_writes_location_and_content_location_on_the_same_upstream_are_invalidated(
    upstream, make_sidecar, client
):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    base = sc.url + "/supabase/rest/v1/accounts"
    for path in ("?id=eq.1", "?id=eq.2"):
        await call(client, sc.url + URL + path)
    await call(client, base)
    upstream.script(respond(201, b"", {"Location": "/rest/v1/bot_profiles?id=eq.1",
                                       "Content-Location": f"{upstream.url}/rest/v1/accounts"}))
    assert (await call(client, sc.url + "/supabase/rest/v1/plain", "POST"))[0] == 201
    assert state(await call(client, sc.url + URL + "?id=eq.2")) == "MISS"  # the path: every query
    assert state(await call(client, base)) == "MISS"


async def test_a_location_on_another_origin_invalidates_nothing(upstream, make_upstream, make_sidecar, client):
    other: FaultyUpstream = await make_upstream()
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    upstream.script(respond(201, b"", {"Location": f"{other.url}/rest/v1/bot_profiles"}))
    await call(client, sc.url + "/supabase/rest/v1/plain", "POST")
    assert state(await call(client, sc.url + URL)) == "HIT"


# -- statuses -------------------------------------------------------------------------------------------------


async def test_a_status_outside_the_heuristic_ones_is_cached_only_when_marked_cacheable(upstream, make_sidecar, client):
    upstream.default = numbered(500, headers={"Cache-Control": "max-age=60"})
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, statuses: [200, 500]}"))
    assert state((await twice(client, sc.url + URL + "?marked"))[1]) == "HIT"
    upstream.default = numbered(500)
    assert state((await twice(client, sc.url + URL + "?silent"))[1]) == "MISS"  # the route's ttl: no guess for 500


async def test_a_heuristic_status_the_route_lists_gets_the_ttl_and_an_explicit_one_is_stored(
    upstream, make_sidecar, client
):
    upstream.default = numbered(410)
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, statuses: [200, 410]}"))
    assert state((await twice(client, sc.url + URL + "?gone"))[1]) == "HIT"
    upstream.default = numbered(301, headers={"Cache-Control": "max-age=60", "Location": "/x"})
    async with client.get(sc.url + URL + "?moved", allow_redirects=False):
        pass
    async with client.get(sc.url + URL + "?moved", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["X-Egress-Cache"]) == (301, "HIT")


# -- the caller's directives ----------------------------------------------------------------------------------


async def test_a_callers_max_age_and_only_if_cached(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "max-age=600", "Age": "100"})
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    young = await call(client, sc.url + URL, headers={"Cache-Control": "max-age=50"})
    assert (young[2], state(young)) == (b"2", "MISS")
    cached = await call(client, sc.url + URL + "?none", headers={"Cache-Control": "only-if-cached"})
    assert (cached[0], cached[1]["X-Egress-Error"]) == (504, "not_cached")
    assert len(upstream.requests) == 2


async def test_a_callers_max_stale_accepts_a_stale_entry_the_origin_did_not_forbid(upstream, make_sidecar, client):
    upstream.default = validating(headers={"Cache-Control": "max-age=0"})  # kept for its validator
    sc = await make_sidecar(policy(upstream))
    await call(client, sc.url + URL)
    reply = await call(client, sc.url + URL, headers={"Cache-Control": "max-stale=60"})
    assert (reply[2], state(reply)) == (b"1", "HIT")


@pytest.mark.parametrize("cdn", ["no-store", "max-age=0", "private", "no-cache"])
async def test_cdn_cache_control_overrides_cache_control_and_expires(upstream, make_sidecar, client, cdn):
    # RFC 9213: an origin's CDN-Cache-Control speaks to every cache on its side of the client, this one included,
    # and replaces its Cache-Control and Expires.
    far = "Fri, 01 Jan 2100 00:00:00 GMT"
    upstream.default = numbered(headers={"Cache-Control": "max-age=600", "Expires": far, "CDN-Cache-Control": cdn})
    sc = await make_sidecar(policy(upstream))
    _, again = await twice(client, sc.url + URL)
    assert again[2] == b"2"  # from the origin, not the first answer stored
    assert len(upstream.requests) == 2


async def test_an_expires_that_is_not_an_http_date_is_already_expired(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Expires": "Fri, 01 Jan 2100 00:00:00 UTC"})  # UTC: not an HTTP-date
    sc = await make_sidecar(policy(upstream))
    _, again = await twice(client, sc.url + URL)
    assert again[2] == b"2"


@pytest.mark.parametrize("cdn", ['max-age="10000"', "max-age=10000, &&&&&", "max-age=1.5"])
async def test_a_cdn_cache_control_that_is_not_a_valid_dictionary_is_ignored(upstream, make_sidecar, client, cdn):
    # RFC 9213 §2.1 / RFC 8941: an invalid targeted field is ignored whole; here Cache-Control says no-store.
    upstream.default = numbered(headers={"Cache-Control": "no-store", "CDN-Cache-Control": cdn})
    sc = await make_sidecar(policy(upstream))
    _, again = await twice(client, sc.url + URL)
    assert again[2] == b"2"

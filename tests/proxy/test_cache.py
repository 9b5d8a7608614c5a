"""Response caching with the memory backend: hits, keys, HTTP rules, single-flight, stale-if-error,
invalidation, LRU bounds, purge, and no credential in a key or a log line."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from proxy.policy import Policy, parse_policy
from proxy.server import Sidecar
from tests.support.sidecar import policy_text
from tests.support.upstream import FaultyUpstream, big_body, delay, echo, hang, numbered, respond, stream

TOKEN_A = "Bearer token-of-user-a"
TOKEN_B = "Bearer token-of-user-b"

Reply = tuple[int, CIMultiDictProxy[str], bytes]


def policy(
    upstream: FaultyUpstream, cache: str = "{ttl: 5m}", settings: str = "", top: str = "", timeouts: str = "{}"
) -> str:
    return f"""
    {top}
    cache: {{{settings}}}
    upstreams:
      supabase:
        url: {upstream.url}
        retry: {{attempts: 1}}
        timeouts: {timeouts}
        routes:
          - name: bot_profile
            match: /rest/v1/bot_profiles
            cache: {cache}
          - name: accounts
            match: GET /rest/v1/accounts
            cache: {{ttl: 5m, invalidate_on_write: true}}
          - name: plain
            match: /rest/v1/plain
    """


async def call(
    client: aiohttp.ClientSession, url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    async with client.request(method, url, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def state(reply: Reply) -> str | None:
    return reply[1].get("X-Egress-Cache")


# -- hit, miss, expiry -----------------------------------------------------------------------------------


async def test_a_repeated_get_is_a_hit_the_upstream_never_sees(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Content-Type": "application/json", "X-Upstream": "kept"})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles?id=eq.1"
    first, second = await call(client, url), await call(client, url)
    assert (first[0], first[2], state(first)) == (200, b"1", "MISS")
    assert (second[0], second[2], state(second)) == (200, b"1", "HIT")
    assert second[1]["Content-Type"] == first[1]["Content-Type"] == "application/json; charset=utf-8"
    assert second[1]["X-Upstream"] == "kept"
    assert second[1]["Content-Length"] == "1"
    assert int(second[1]["Age"]) >= 0
    assert "X-Request-ID" in second[1]
    assert len(upstream.requests) == 1


async def test_an_entry_expires_after_its_ttl(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, "{ttl: 300ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    assert state(await call(client, url)) == "MISS"
    assert state(await call(client, url)) == "HIT"
    await asyncio.sleep(0.4)
    reply = await call(client, url)
    assert (state(reply), reply[2]) == ("MISS", b"2")


async def test_routes_without_a_cache_rule_carry_no_cache_header(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    first = await call(client, sc.url + "/supabase/rest/v1/plain")
    second = await call(client, sc.url + "/supabase/rest/v1/plain")
    assert "X-Egress-Cache" not in first[1]
    assert second[2] == b"2"


# -- what makes a key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Authorization", "apikey", "Cookie"])
async def test_two_callers_credentials_never_share_an_entry(upstream, make_sidecar, client, header):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    a1 = await call(client, url, headers={header: TOKEN_A})
    b1 = await call(client, url, headers={header: TOKEN_B})
    none = await call(client, url)
    a2 = await call(client, url, headers={header: TOKEN_A})
    assert [(r[2], state(r)) for r in (a1, b1, none, a2)] == [
        (b"1", "MISS"), (b"2", "MISS"), (b"3", "MISS"), (b"1", "HIT")
    ]


@pytest.mark.parametrize(
    "header", ["X-Api-Key", "x-goog-api-key", "Proxy-Authorization", "X-Auth-Token", "X-Amz-Security-Token"]
)
async def test_common_api_key_headers_are_credentials_by_default(upstream, make_sidecar, client, header):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    replies = [await call(client, url, headers=h) for h in ({header: "key-a"}, {header: "key-b"}, {header: "key-a"})]
    assert [(r[2], state(r)) for r in replies] == [(b"1", "MISS"), (b"2", "MISS"), (b"1", "HIT")]


async def test_the_policy_names_more_credential_headers(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, settings="credential_headers: [X-Tenant-Key]"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    headers = ({"X-Tenant-Key": "a"}, {"x-tenant-key": "b"}, {"X-TENANT-KEY": "a"}, {"X-Api-Key": "c"})
    replies = [await call(client, url, headers=h) for h in headers]
    assert [(r[2], state(r)) for r in replies] == [(b"1", "MISS"), (b"2", "MISS"), (b"1", "HIT"), (b"3", "MISS")]
    rendered = await (await client.get(sc.admin + "/policy")).json()
    assert rendered["cache"]["credential_headers"][-1] == "x-tenant-key"
    assert "x-tenant-key" in rendered["upstreams"]["supabase"]["routes"][0]["cache"]["vary"]


async def test_the_upstreams_vary_headers_split_entries(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Vary": "Accept-Language, Accept-Encoding"})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    en = {"Accept-Language": "en", "Accept-Encoding": "gzip"}
    fr = {"Accept-Language": "fr", "Accept-Encoding": "gzip"}
    replies = [await call(client, url, headers=h) for h in (en, fr, en, fr, {**en, "Accept-Encoding": "br"})]
    assert [(r[2], state(r)) for r in replies] == [
        (b"1", "MISS"), (b"2", "MISS"), (b"1", "HIT"), (b"2", "HIT"), (b"3", "MISS")
    ]


async def test_vary_star_is_never_stored(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Vary": "*"})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    assert state(await call(client, url)) == "MISS"


async def test_query_parameter_order_does_not_matter_but_values_do(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    base = sc.url + "/supabase/rest/v1/bot_profiles"
    first = await call(client, base + "?select=*&id=eq.1&order=name")
    reordered = await call(client, base + "?order=name&id=eq.1&select=*")
    other = await call(client, base + "?order=name&id=eq.2&select=*")
    assert [(r[2], state(r)) for r in (first, reordered, other)] == [(b"1", "MISS"), (b"1", "HIT"), (b"2", "MISS")]
    # A repeated parameter's values keep their order: a list in that order, to some APIs.
    listed = await call(client, base + "?fields=b&id=eq.1&fields=a")
    relisted = await call(client, base + "?id=eq.1&fields=b&fields=a")
    swapped = await call(client, base + "?fields=a&id=eq.1&fields=b")
    assert [(r[2], state(r)) for r in (listed, relisted, swapped)] == [(b"3", "MISS"), (b"3", "HIT"), (b"4", "MISS")]


async def test_head_is_cached_apart_from_get_and_keeps_its_content_length(upstream, make_sidecar, client):
    upstream.default = respond(200, b"0123456789")
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    head1 = await call(client, url, "HEAD")
    head2 = await call(client, url, "HEAD")
    get = await call(client, url)
    assert (state(head1), state(head2), state(get)) == ("MISS", "HIT", "MISS")
    assert head2[1]["Content-Length"] == "10"
    assert head2[2] == b""
    assert get[2] == b"0123456789"
    assert [r.method for r in upstream.requests] == ["HEAD", "GET"]


# -- HTTP rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directive", ["no-store", "private", "private, max-age=60"])
async def test_the_upstream_can_forbid_storing(upstream, make_sidecar, client, directive):
    upstream.default = numbered(headers={"Cache-Control": directive})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    reply = await call(client, url)
    assert (reply[2], state(reply)) == (b"2", "MISS")


async def test_a_route_override_stores_what_the_upstream_forbade(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Cache-Control": "no-store, private", "Set-Cookie": "session=s1"})
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, override: true}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    reply = await call(client, url)
    assert (reply[2], state(reply)) == (b"1", "HIT")
    assert "Set-Cookie" not in reply[1]  # one caller's cookie is never replayed to another


async def test_a_response_setting_a_cookie_is_not_stored(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Set-Cookie": "session=s1"})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    assert state(await call(client, url)) == "MISS"


async def test_a_callers_no_cache_fetches_anew_and_stores_the_result(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    refreshed = await call(client, url, headers={"Cache-Control": "no-cache"})
    after = await call(client, url)
    assert (refreshed[2], state(refreshed)) == (b"2", "REFRESH")
    assert (after[2], state(after)) == (b"2", "HIT")


async def test_a_callers_no_store_bypasses_the_cache_both_ways(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    bypassed = await call(client, url, headers={"Cache-Control": "no-store"})
    stored = await call(client, url)
    bypassed_again = await call(client, url, headers={"Cache-Control": "no-store"})
    assert [(r[2], state(r)) for r in (bypassed, stored, bypassed_again)] == [
        (b"1", "BYPASS"), (b"2", "MISS"), (b"3", "BYPASS")
    ]
    assert state(await call(client, url)) == "HIT"


async def test_a_body_over_max_body_streams_through_uncached(upstream, make_sidecar, client):
    upstream.default = big_body(4096)
    sc = await make_sidecar(policy(upstream, settings="max_body: 1KiB"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    for _ in range(2):
        reply = await call(client, url)
        assert (reply[0], len(reply[2]), state(reply)) == (200, 4096, "MISS")
    assert len(upstream.requests) == 2


async def test_a_chunked_body_is_cached_only_when_it_fits(upstream, make_sidecar, client):
    small = [b"a" * 300, b"b" * 300]
    large = [b"c" * 700, b"d" * 700]
    upstream.script(stream(small, headers={}), stream(large, headers={}), stream(large, headers={}))
    sc = await make_sidecar(policy(upstream, settings="max_body: 1KiB"))
    base = sc.url + "/supabase/rest/v1/bot_profiles"
    assert (await call(client, base + "?s"))[2] == b"".join(small)
    hit = await call(client, base + "?s")
    assert (hit[2], state(hit)) == (b"".join(small), "HIT")
    for _ in range(2):  # read up to max_body + 1, then the rest streams behind what was read
        reply = await call(client, base + "?l")
        assert (reply[2], state(reply)) == (b"".join(large), "MISS")


@pytest.mark.parametrize("status", [201, 404, 500])
async def test_statuses_outside_the_rule_are_not_stored(upstream, make_sidecar, client, status):
    upstream.default = numbered(status)
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (status, b"2", "MISS")


async def test_a_rule_may_name_more_statuses(upstream, make_sidecar, client):
    upstream.default = numbered(404)
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, statuses: [200, 404]}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (404, b"1", "HIT")


# -- single-flight ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_identical_gets_reach_the_upstream_once(upstream, make_sidecar, client):
    upstream.default = delay(0.2, numbered())
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles?id=eq.1"
    replies = await asyncio.gather(*(call(client, url, headers={"Authorization": TOKEN_A}) for _ in range(50)))
    assert len(upstream.requests) == 1
    assert {(r[0], r[2]) for r in replies} == {(200, b"1")}
    assert sorted(state(r) or "" for r in replies) == ["HIT"] * 49 + ["MISS"]


async def test_concurrent_misses_of_different_callers_do_not_share(upstream, make_sidecar, client):
    upstream.default = delay(0.1, numbered())
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    a, b = await asyncio.gather(
        call(client, url, headers={"Authorization": TOKEN_A}), call(client, url, headers={"Authorization": TOKEN_B})
    )
    assert {a[2], b[2]} == {b"1", b"2"}


async def test_concurrent_identical_requests_share_the_leaders_failure(upstream, make_sidecar, client):
    upstream.default = hang()
    sc = await make_sidecar(policy(upstream, timeouts="{read: 300ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    started = time.monotonic()
    replies = await asyncio.gather(*(call(client, url) for _ in range(10)))
    assert {(r[0], r[1].get("X-Egress-Error")) for r in replies} == {(504, "upstream_timeout")}
    assert len(upstream.requests) == 1
    assert time.monotonic() - started < 1.5  # one timeout, not ten in a row


async def test_followers_do_not_wait_for_a_leaders_unstorable_answer_to_stream(upstream, make_sidecar, client):
    upstream.script(delay(0.1, stream([b"a"] * 5, gap=0.2, headers={"Cache-Control": "no-store"})))
    upstream.default = respond(200, b"own", {"Cache-Control": "no-store"})
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    leader = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.05)  # the leader is waiting for the upstream's headers
    started = time.monotonic()
    follower = await call(client, url)
    assert follower[2] == b"own"
    assert time.monotonic() - started < 0.6  # the leader's stream takes a second
    assert (await leader)[2] == b"aaaaa"


async def test_a_leader_whose_caller_hangs_up_lets_its_followers_fetch_for_themselves(
    upstream, make_sidecar, client
):
    upstream.script(hang())  # the leader's upstream call never ends
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    leader = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)
    follower = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)
    leader.cancel()
    reply = await asyncio.wait_for(follower, 2)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "MISS")


# -- stale-if-error --------------------------------------------------------------------------------------

STALE_RULE = "{ttl: 300ms, stale_if_error: 1h}"


async def expired_entry(client: aiohttp.ClientSession, url: str) -> None:
    assert state(await call(client, url)) == "MISS"
    await asyncio.sleep(0.4)


async def test_a_stale_entry_stands_in_for_a_5xx(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.INFO, logger="egress.cache")
    upstream.script(numbered(), respond(503, b"down"))
    sc = await make_sidecar(policy(upstream, STALE_RULE))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")
    assert int(reply[1]["Age"]) >= 0
    assert any(r.getMessage().startswith("Cache STALE supabase bot_profile GET") for r in caplog.records)


async def test_a_stale_entry_stands_in_for_a_timeout(upstream, make_sidecar, client):
    upstream.script(numbered(), hang())
    sc = await make_sidecar(policy(upstream, STALE_RULE, timeouts="{read: 200ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")


async def test_a_stale_entry_stands_in_while_the_breaker_is_open(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, STALE_RULE))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    async with client.post(sc.admin + "/breakers/supabase/open") as resp:
        assert resp.status == 200
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")
    assert len(upstream.requests) == 1


async def test_a_stale_entry_stands_in_while_the_upstream_is_overloaded(upstream, make_sidecar, client):
    # The bulkhead's refusal is a failure like any other to the cache above it (it was once raised past the cache).
    upstream.script(numbered(), delay(1, respond(200, b"slow")))
    one_slot = "retry: {attempts: 1}\n        limits: {max_concurrent: 1, max_queue: 0}"
    sc = await make_sidecar(policy(upstream, STALE_RULE).replace("retry: {attempts: 1}", one_slot))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    busy = asyncio.create_task(call(client, sc.url + "/supabase/rest/v1/plain"))  # holds the one slot
    await asyncio.sleep(0.2)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")
    assert (await busy)[0] == 200


async def test_a_fresh_answer_replaces_the_stale_one(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, STALE_RULE))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    reply = await call(client, url)
    assert (reply[2], state(reply)) == (b"2", "MISS")
    assert state(await call(client, url)) == "HIT"


async def test_without_stale_if_error_the_failure_reaches_the_caller(upstream, make_sidecar, client):
    upstream.script(numbered(), respond(503, b"down"))
    sc = await make_sidecar(policy(upstream, "{ttl: 300ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (503, b"down", "MISS")


# -- invalidation ----------------------------------------------------------------------------------------


async def test_a_successful_write_invalidates_every_query_of_the_path(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    base = sc.url + "/supabase/rest/v1/accounts"
    urls = [base + "?id=eq.42", base + "?id=eq.7", base]
    for url in urls:
        await call(client, url, headers={"Authorization": TOKEN_A})
        await call(client, url, headers={"Authorization": TOKEN_B})
    upstream.script(respond(204, b""))
    patch = await call(client, base + "?id=eq.42", "PATCH", headers={"Authorization": TOKEN_A})
    assert patch[0] == 204
    for url in urls:
        for token in (TOKEN_A, TOKEN_B):
            assert state(await call(client, url, headers={"Authorization": token})) == "MISS"


@pytest.mark.parametrize("status", [400, 409, 500])
async def test_a_failed_write_invalidates_nothing(upstream, make_sidecar, client, status):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/accounts?id=eq.42"
    await call(client, url)
    upstream.script(respond(status, b"no"))
    assert (await call(client, url, "PATCH"))[0] == status
    assert state(await call(client, url)) == "HIT"


async def test_writes_leave_routes_with_invalidate_on_write_false_alone(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, "{ttl: 5m, invalidate_on_write: false}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    await call(client, url, "POST")
    assert state(await call(client, url)) == "HIT"


async def test_by_default_a_successful_write_to_a_cached_path_invalidates_it(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    await call(client, url, "POST")
    assert state(await call(client, url)) == "MISS"


# -- LRU bounds ------------------------------------------------------------------------------------------


async def test_the_least_recently_used_entry_goes_first_past_max_entries(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, settings="max_entries: 2"))
    base = sc.url + "/supabase/rest/v1/bot_profiles?n="
    await call(client, base + "a")
    await call(client, base + "b")
    assert state(await call(client, base + "a")) == "HIT"  # a is now the most recently used
    await call(client, base + "c")  # evicts b
    assert state(await call(client, base + "a")) == "HIT"
    assert state(await call(client, base + "c")) == "HIT"
    assert state(await call(client, base + "b")) == "MISS"
    assert sc.runtime.metrics.registry.get_sample_value("egress_cache_entries") == 2


async def test_max_bytes_bounds_what_the_memory_cache_holds(upstream, make_sidecar, client):
    upstream.default = respond(200, b"x" * 1000)
    sc = await make_sidecar(policy(upstream, settings="max_bytes: 3000"))  # two entries (body + headers)
    base = sc.url + "/supabase/rest/v1/bot_profiles?n="
    for name in "abc":
        await call(client, base + name)
    held = sc.runtime.metrics.registry.get_sample_value("egress_cache_bytes")
    assert held is not None and 2000 < held <= 3000
    assert sc.runtime.metrics.registry.get_sample_value("egress_cache_entries") == 2
    assert state(await call(client, base + "a")) == "MISS"


# -- purge -----------------------------------------------------------------------------------------------

ADMIN = "listen: 127.0.0.1:0\n    admin: {listen: 127.0.0.1:0, token: t}"


async def test_purge_needs_the_admin_token_and_empties_an_upstream(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, top=ADMIN))
    urls = [sc.url + "/supabase/rest/v1/bot_profiles", sc.url + "/supabase/rest/v1/accounts"]
    for url in urls:
        await call(client, url)
    async with client.delete(sc.admin + "/cache?upstream=supabase") as resp:
        assert resp.status == 401
    assert state(await call(client, urls[0])) == "HIT"
    async with client.delete(sc.admin + "/cache?upstream=supabase", headers={"Authorization": "Bearer t"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["purged"] == {"upstream": "supabase", "route": None}
    assert [state(await call(client, url)) for url in urls] == ["MISS", "MISS"]


async def test_purge_of_one_route_keeps_the_others(upstream, make_sidecar, client):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, top=ADMIN))
    profiles, accounts = sc.url + "/supabase/rest/v1/bot_profiles", sc.url + "/supabase/rest/v1/accounts"
    await call(client, profiles)
    await call(client, accounts)
    auth = {"Authorization": "Bearer t"}
    async with client.delete(sc.admin + "/cache?upstream=supabase&route=bot_profile", headers=auth) as resp:
        assert resp.status == 200
    assert (state(await call(client, profiles)), state(await call(client, accounts))) == ("MISS", "HIT")


@pytest.mark.parametrize(
    ("query", "status"), [("", 400), ("?upstream=nope", 404), ("?upstream=supabase&route=nope", 404)]
)
async def test_purge_refuses_unknown_targets(upstream, make_sidecar, client, query, status):
    sc = await make_sidecar(policy(upstream, top=ADMIN))
    async with client.delete(sc.admin + "/cache" + query, headers={"Authorization": "Bearer t"}) as resp:
        assert resp.status == status


# -- secrets, logs, metrics ------------------------------------------------------------------------------


async def test_credentials_appear_in_no_memory_key_and_no_log_line(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.DEBUG, logger="egress")
    upstream.default = numbered(headers={"Vary": "X-Tenant"})
    sc = await make_sidecar(policy(upstream))
    secrets = {"Authorization": "Bearer sekrit-jwt-value", "apikey": "sekrit-api-key", "X-Tenant": "sekrit-tenant"}
    url = sc.url + "/supabase/rest/v1/bot_profiles?id=eq.1"
    await call(client, url, headers=secrets)
    assert state(await call(client, url, headers=secrets)) == "HIT"
    memory = sc.runtime.cache.storage.backend
    keys = list(memory.lru.keys())
    assert any(k.startswith("entry:supabase:bot_profile:") for k in keys)
    assert any(k.startswith("vary:supabase:") for k in keys)
    assert not [k for k in keys if "sekrit" in k]
    assert not [r for r in caplog.records if "sekrit" in r.getMessage()]


async def test_cache_log_lines_say_what_happened(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.DEBUG, logger="egress.cache")
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles?id=eq.1"
    await call(client, url)
    await call(client, url)
    lines = [r.getMessage() for r in caplog.records if r.name == "egress.cache"]
    assert "Cache MISS supabase bot_profile GET /rest/v1/bot_profiles?id=eq.1" in lines
    assert "Cache SET supabase bot_profile GET /rest/v1/bot_profiles?id=eq.1 (ttl=300s)" in lines
    assert any(line.startswith("Cache HIT supabase bot_profile GET /rest/v1/bot_profiles?id=eq.1") for line in lines)
    set_record = next(r for r in caplog.records if r.getMessage().startswith("Cache SET"))
    assert set_record.levelno == logging.INFO


async def test_results_are_counted_and_logged_in_the_access_log(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.INFO, logger="egress.access")
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    for _ in range(3):
        await call(client, url)
    registry = sc.runtime.metrics.registry
    labels = {"upstream": "supabase", "route": "bot_profile"}
    assert registry.get_sample_value("egress_cache_requests_total", {**labels, "result": "MISS"}) == 1
    assert registry.get_sample_value("egress_cache_requests_total", {**labels, "result": "HIT"}) == 2
    assert sum("cache=HIT" in r.getMessage() for r in caplog.records) == 2


# -- found in review: bounds, Vary, credentials, throttling, purges ----------------------------------------


async def test_one_answer_larger_than_max_bytes_is_not_stored_and_evicts_nothing(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream, settings="max_bytes: 4KiB"))
    base = sc.url + "/supabase/rest/v1/bot_profiles"
    upstream.default = numbered()
    for query in ("a", "b", "c"):
        assert state(await call(client, f"{base}?{query}")) == "MISS"
    upstream.script(big_body(8192))
    assert len((await call(client, f"{base}?big"))[2]) == 8192  # it went through, it was not kept
    assert [state(await call(client, f"{base}?{q}")) for q in ("a", "b", "c", "big")] == ["HIT", "HIT", "HIT", "MISS"]


async def test_vary_markers_do_not_take_an_entrys_place(upstream, make_sidecar, client):
    upstream.default = numbered(headers={"Vary": "Accept-Encoding"})
    sc = await make_sidecar(policy(upstream, settings="max_entries: 2"))
    base = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, f"{base}?a")
    await call(client, f"{base}?b")
    assert [state(await call(client, f"{base}?{q}")) for q in ("b", "a")] == ["HIT", "HIT"]
    async with client.get(sc.admin + "/metrics") as resp:
        assert "egress_cache_entries 2.0" in await resp.text()


async def test_a_follower_with_a_fresh_entry_of_its_own_is_not_handed_the_leaders_failure(
    upstream, make_sidecar, client
):
    # The single-flight key leaves out what the upstream's Vary names: fr could follow en's fetch, wait for it
    # and get its failure. In process a lookup comes first, so fr answers from its own entry at once.
    upstream.default = numbered(headers={"Vary": "Accept-Language"})
    sc = await make_sidecar(policy(upstream, timeouts="{read: 500ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    french = {"Accept-Language": "fr"}
    assert [state(await call(client, url, headers=french)) for _ in range(2)] == ["MISS", "HIT"]
    upstream.script(hang())
    leader = asyncio.create_task(call(client, url, headers={"Accept-Language": "en"}))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    follower = await call(client, url, headers=french)
    assert time.monotonic() - started < 0.25  # en's fetch hangs until its 500 ms read timeout
    assert (await leader)[0] == 504
    assert (follower[0], follower[2], state(follower)) == (200, b"1", "HIT")


async def test_an_answer_to_a_throttled_upstream_is_replaced_by_a_stale_entry(upstream, make_sidecar, client):
    upstream.script(numbered(), respond(429, b"slow down", {"Retry-After": "30"}))
    sc = await make_sidecar(policy(upstream, STALE_RULE))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await expired_entry(client, url)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")


async def test_a_read_after_a_purge_does_not_join_a_fetch_begun_before_it(upstream, make_sidecar, client):
    upstream.default = delay(0.5, numbered())
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    before = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)
    async with client.delete(sc.admin + "/cache?upstream=supabase") as resp:
        assert resp.status == 200
    after = await call(client, url)
    await before
    assert (after[2], state(after)) == (b"2", "MISS")


async def test_new_injected_credentials_do_not_see_what_the_old_ones_fetched(upstream, client):
    # A reload that rotates the key the sidecar injects (service role -> anon) keeps the cache: the answers
    # fetched as the service role must not be served to the anon key's requests.
    injected = {"apikey": "service-role-key"}

    def load() -> Policy:
        headers = f'headers: {{apikey: "{injected["apikey"]}"}}'
        text = policy(upstream).replace("retry: {attempts: 1}", "retry: {attempts: 1}\n        " + headers)
        return parse_policy(policy_text(text), "test-policy.yaml", {})

    upstream.default = echo()
    sidecar = Sidecar(load(), loader=load)
    await sidecar.start()
    try:
        url = f"http://127.0.0.1:{sidecar.data_port}/supabase/rest/v1/bot_profiles"
        assert b"service-role-key" in (await call(client, url))[2]
        injected["apikey"] = "anon-key"
        assert (await sidecar.reload()).applied
        after = await call(client, url)
        assert (state(after), b"service-role-key" in after[2]) == ("MISS", False)
    finally:
        await sidecar.stop()


async def test_an_identical_request_while_the_first_answer_is_still_being_written_is_a_hit(
    upstream, make_sidecar, client
):
    # The fetch's flight stays joinable until its answer is written and stored: a caller reading slowly must
    # not send identical requests upstream meanwhile.
    size = 4 * 1024 * 1024
    upstream.default = big_body(size)
    sc = await make_sidecar(policy(upstream, settings="max_body: 8MiB, max_bytes: 64MiB"))
    path = "/supabase/rest/v1/bot_profiles?id=eq.1"
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(slow, ("127.0.0.1", sc.sidecar.data_port))
        await loop.sock_sendall(slow, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(0.5)  # fetched whole, and being written to the slow reader
        second = await asyncio.wait_for(call(client, sc.url + path), 10)
        assert (len(second[2]), state(second)) == (size, "HIT")
        assert len(upstream.requests) == 1
    finally:
        slow.close()

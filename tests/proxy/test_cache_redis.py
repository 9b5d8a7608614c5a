"""Response caching with the Redis backend: shared by replicas (entries, invalidations, purges), keys that
hold no credential, and a Redis that dies or stalls costs the data plane nothing but the cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.proxy.test_cache import call, state
from tests.proxy.test_cache_http import validating
from tests.support.upstream import FaultyUpstream, SilentListener, delay, numbered, respond

SECRETS = {"Authorization": "Bearer sekrit-jwt-value", "apikey": "sekrit-api-key", "X-Tenant": "sekrit-tenant"}


def policy(
    upstream: FaultyUpstream, redis_url: str, namespace: str, cache: str = "{ttl: 5m}", top: str = ""
) -> str:
    return f"""
    {top}
    cache: {{backend: redis, redis_url: "{redis_url}", namespace: {namespace}, op_timeout: 50ms}}
    upstreams:
      supabase:
        url: {upstream.url}
        retry: {{attempts: 1}}
        routes:
          - name: bot_profile
            match: GET /rest/v1/bot_profiles
            cache: {cache}
          - name: accounts
            match: GET /rest/v1/accounts
            cache: {{ttl: 5m, invalidate_on_write: true}}
    """


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def keys_of(client: aioredis.Redis, namespace: str) -> list[str]:
    return [key.decode() async for key in client.scan_iter(match=f"{namespace}:*")]


# -- shared entries --------------------------------------------------------------------------------------


async def test_redis_keys_hold_no_credential_and_no_path(
    upstream, make_sidecar, client, redis_url, redis_namespace, redis_client
):
    upstream.default = numbered(headers={"Vary": "X-Tenant"})
    sc = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    url = sc.url + "/supabase/rest/v1/accounts?id=eq.1"
    assert state(await call(client, url, headers=SECRETS)) == "MISS"
    assert state(await call(client, url, headers=SECRETS)) == "HIT"
    upstream.script(respond(204, b""))
    await call(client, url, "PATCH", headers=SECRETS)
    keys = await keys_of(redis_client, redis_namespace)
    kinds = {key.split(":")[1] for key in keys}
    assert kinds == {"entry", "vary", "gen"}
    assert not [k for k in keys if "sekrit" in k or "/rest/v1" in k]
    assert 0 < await redis_client.pttl(next(k for k in keys if ":entry:" in k)) <= 300_000


async def test_an_entry_expires_after_its_ttl_in_redis(upstream, make_sidecar, client, redis_url, redis_namespace):
    upstream.default = numbered()
    sc = await make_sidecar(policy(upstream, redis_url, redis_namespace, "{ttl: 300ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    assert [state(await call(client, url)) for _ in range(2)] == ["MISS", "HIT"]
    await asyncio.sleep(0.4)
    reply = await call(client, url)
    assert (reply[2], state(reply)) == (b"2", "MISS")


async def test_two_sidecars_share_entries_and_invalidations(
    upstream, make_sidecar, client, redis_url, redis_namespace
):
    upstream.default = numbered()
    one = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    two = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    path = "/supabase/rest/v1/accounts?id=eq.42"
    auth = {"Authorization": "Bearer user"}
    assert (await call(client, one.url + path, headers=auth))[2] == b"1"
    shared = await call(client, two.url + path, headers=auth)
    assert (shared[2], state(shared)) == (b"1", "HIT")
    upstream.script(respond(204, b""))
    assert (await call(client, two.url + path, "PATCH", headers=auth))[0] == 204
    fresh = await call(client, one.url + path, headers=auth)
    assert (fresh[2], state(fresh)) == (b"2", "MISS")
    assert state(await call(client, two.url + path, headers=auth)) == "HIT"


async def test_a_purge_on_one_replica_empties_the_others(upstream, make_sidecar, client, redis_url, redis_namespace):
    upstream.default = numbered()
    admin = "listen: 127.0.0.1:0\n    admin: {listen: 127.0.0.1:0, token: t}"
    one = await make_sidecar(policy(upstream, redis_url, redis_namespace, top=admin))
    two = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    url = two.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    async with client.delete(one.admin + "/cache?upstream=supabase&route=bot_profile",
                             headers={"Authorization": "Bearer t"}) as resp:
        assert resp.status == 200
    assert state(await call(client, url)) == "MISS"


async def test_replicas_share_only_with_the_same_key_secret(upstream, make_sidecar, client, redis_url, redis_namespace):
    upstream.default = numbered()
    text = policy(upstream, redis_url, redis_namespace)
    one = await make_sidecar(text, {"EGRESS_CACHE_KEY_SECRET": "first-secret"})
    other = await make_sidecar(text, {"EGRESS_CACHE_KEY_SECRET": "other-secret"})
    same = await make_sidecar(text, {"EGRESS_CACHE_KEY_SECRET": "first-secret"})
    path = "/supabase/rest/v1/bot_profiles"
    assert [state(await call(client, sc.url + path)) for sc in (one, other, same)] == ["MISS", "MISS", "HIT"]


async def test_stale_if_error_with_redis(upstream, make_sidecar, client, redis_url, redis_namespace):
    upstream.script(numbered(), respond(503, b"down"))
    sc = await make_sidecar(policy(upstream, redis_url, redis_namespace, "{ttl: 300ms, stale_if_error: 1h}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    await call(client, url)
    await asyncio.sleep(0.4)
    reply = await call(client, url)
    assert (reply[0], reply[2], state(reply)) == (200, b"1", "STALE")


async def test_single_flight_with_redis(upstream, make_sidecar, client, redis_url, redis_namespace):
    upstream.default = delay(0.2, numbered())
    sc = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    replies = await asyncio.gather(*(call(client, url) for _ in range(50)))
    assert {r[2] for r in replies} == {b"1"}
    assert len(upstream.requests) == 1


# -- a Redis that fails ----------------------------------------------------------------------------------


def cache_errors(sc) -> float:
    return sc.runtime.metrics.registry.get_sample_value("egress_cache_errors_total", {"backend": "redis"}) or 0.0


async def test_a_redis_that_dies_costs_only_the_cache_and_is_used_again_when_back(
    upstream, make_sidecar, client, make_redis, redis_namespace, caplog
):
    caplog.set_level(logging.WARNING, logger="egress.cache")
    upstream.default = numbered()
    own = make_redis()
    sc = await make_sidecar(policy(upstream, own.url, redis_namespace))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    assert [state(await call(client, url)) for _ in range(2)] == ["MISS", "HIT"]

    own.stop()
    for _ in range(5):
        started = time.monotonic()
        reply = await call(client, url)
        assert (reply[0], state(reply)) == (200, "MISS")
        assert time.monotonic() - started < 0.5
    assert cache_errors(sc) >= 1
    assert sum("Cache backend redis unavailable" in r.getMessage() for r in caplog.records) == 1

    own.start()  # an empty Redis on the same port: the cache fills again by itself
    give_up = time.monotonic() + 10
    while state(await call(client, url)) != "HIT":
        assert time.monotonic() < give_up, "the cache did not recover after Redis came back"
        await asyncio.sleep(0.1)


async def test_a_redis_that_never_answers_adds_no_more_than_the_op_timeout(
    upstream, make_sidecar, client, redis_namespace
):
    upstream.default = numbered()
    silent = SilentListener()
    try:
        sc = await make_sidecar(policy(upstream, f"redis://127.0.0.1:{silent.port}/0", redis_namespace))
        url = sc.url + "/supabase/rest/v1/bot_profiles"
        for expected in (b"1", b"2", b"3"):
            started = time.monotonic()
            reply = await call(client, url)
            assert (reply[0], reply[2], state(reply)) == (200, expected, "MISS")
            assert time.monotonic() - started < 0.3  # op_timeout is 50ms; aiocache's own default would be 5s
        assert cache_errors(sc) >= 1
    finally:
        silent.close()


class RedisRelay:
    """A relay to the real Redis whose replies come `every` seconds late, and a new connection's first reply
    `dial` seconds late (a TLS or cross-zone dial); `drop_all` cuts every open connection (a network blip)."""

    def __init__(self, redis_url: str, dial: float = 0.0, every: float = 0.0) -> None:
        self.target_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self.dial = dial
        self.every = every
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RedisRelay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, upstream_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, first: float, every: float) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await asyncio.sleep(first + every)
                    first = 0
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, 0, 0), pipe(upstream_reader, writer, self.dial, self.every)
        )

    def drop_all(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()


async def test_the_cache_comes_back_when_redis_does_even_if_dialling_takes_longer_than_op_timeout(
    upstream, make_sidecar, client, redis_url, redis_namespace
):
    # A request's op_timeout (50 ms) cancelled every reconnection (80 ms) it started: the cache stayed down.
    upstream.default = numbered()
    far = await RedisRelay(redis_url, dial=0.08).start()
    try:
        sc = await make_sidecar(policy(upstream, far.url, redis_namespace))
        url = sc.url + "/supabase/rest/v1/bot_profiles"
        assert [state(await call(client, url)) for _ in range(2)] == ["MISS", "HIT"]
        far.drop_all()
        await asyncio.sleep(0.05)
        give_up = time.monotonic() + 5
        while state(reply := await call(client, url)) != "HIT":
            assert reply[0] == 200  # meanwhile: uncached, never an error
            assert time.monotonic() < give_up, f"no recovery in 5 s, {cache_errors(sc)} errors"
            await asyncio.sleep(0.1)
        assert cache_errors(sc) >= 1
    finally:
        far.server.close()


async def test_a_miss_does_not_wait_for_its_own_storing(upstream, make_sidecar, client, redis_url, redis_namespace):
    # Redis answering every command 100 ms late: the lookup (two round trips) is the MISS's only cost; the
    # marker and entry are written after the answer went out, in time for the caller's next request.
    upstream.default = numbered(headers={"Vary": "X-Tenant"})
    slow = await RedisRelay(redis_url, every=0.1).start()
    try:
        text = policy(upstream, slow.url, redis_namespace).replace("op_timeout: 50ms", "op_timeout: 300ms")
        sc = await make_sidecar(text)
        url = sc.url + "/supabase/rest/v1/bot_profiles"
        await call(client, url + "?warm")  # the connections are dialled
        await asyncio.sleep(0.3)  # and its own storing is done
        started = time.monotonic()
        assert state(await call(client, url)) == "MISS"
        assert time.monotonic() - started < 0.28  # two round trips; storing first made it four
        assert state(await call(client, url)) == "HIT"
    finally:
        slow.server.close()


async def test_a_closed_store_is_left_alone_and_never_revived(redis_url):
    # A reload retires a Redis cache while requests still hold it: they pass through, and no failure of theirs
    # may start a reconnect loop on the closed client.
    from proxy.cache.store import open_store
    from proxy.metrics import Metrics
    from proxy.policy import CacheSettings

    metrics = Metrics()
    store = open_store(CacheSettings(backend="redis", redis_url=redis_url, key_secret="s"), metrics)
    assert await store.warm_up()
    await store.close()
    assert await store.get("anything") is None
    assert await store.set("anything", b"v", 10) is False
    assert store._recovery is None
    assert metrics.cache_errors.labels("redis")._value.get() == 0


async def test_a_replica_revalidates_what_another_stored_and_both_see_the_refreshed_entry(
    upstream, make_sidecar, client, redis_url, redis_namespace
):
    # Entries carry their age, lifetime and validators through Redis: a replica revalidates another's entry.
    upstream.default = validating(headers={"Cache-Control": "max-age=0", "Age": "5"},
                                  not_modified={"Cache-Control": "max-age=60", "Age": "5"})
    one = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    two = await make_sidecar(policy(upstream, redis_url, redis_namespace))
    path = "/supabase/rest/v1/bot_profiles"
    assert state(await call(client, one.url + path)) == "MISS"
    revalidated = await call(client, two.url + path)
    assert (revalidated[2], state(revalidated)) == (b"1", "REVALIDATED")
    assert upstream.requests[1].headers["If-None-Match"] == '"v1"'
    await asyncio.sleep(0.1)  # the refreshed entry is written once the answer went out
    hit = await call(client, one.url + path)
    assert (hit[2], state(hit)) == (b"1", "HIT")
    assert int(hit[1]["Age"]) >= 5

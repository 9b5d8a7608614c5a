"""The budgets every replica shares: one Lua script per decision in Redis, and each replica's heartbeat.

`DECIDE` is GCRA (see `proxy.pacing.gcra`, the same arithmetic) over every limit of one request at once, on Redis's
own clock (`TIME`: the replicas' clocks never have to agree), in microseconds: one `EVALSHA`, one round trip. If
one limit would make the request wait past its allowance, no bucket is touched. Each bucket is one string key,
`<cache.namespace>:rl:{<upstream>}:<limit>:<key>`, set with a TTL that ends when the bucket is full again: a key
exists only while it remembers something. (`{<upstream>}` is a hash tag: a Redis Cluster keeps one upstream's
buckets, and so one script's keys, on one shard.)

Redis is never waited on past `cache.op_timeout`: a decision that takes longer, or fails, is made by the pacer's
local fallback instead (`proxy.pacing.Pacer`), the link is marked down (`egress_rate_limit_backend_errors_total`,
one warning per `WARN_EVERY`) and the requests stop asking Redis until a heartbeat gets through again.

`HEARTBEAT`: every `HEARTBEAT_EVERY`, each replica pacing this upstream through Redis adds itself to a sorted set
scored by Redis's clock and counts the members heard from within `SILENT_AFTER`: that count is `replicas: auto`,
the divisor of each limit's rate should Redis go down. The heartbeat also dials (off any request's clock: a cold
connect with AUTH can take longer than `op_timeout`) and brings the link back up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.logs import Occasional
from proxy.pacing.gcra import Bucket, Decision, Turn
from proxy.policy import CacheSettings

log = logging.getLogger("egress.pacing")

HEARTBEAT_EVERY = 2.0
SILENT_AFTER = 3 * HEARTBEAT_EVERY  # a replica not heard from for this long no longer counts
REST_AFTER_FAILURE = 1.0  # while down, a heartbeat tries every this
DIAL_TIMEOUT = 1.0  # a heartbeat's bound, dial included
WARN_EVERY = 30.0
POOL_SIZE = 64  # connections to Redis per upstream; a decision waiting for one still ends at op_timeout
MAX_KEY = 200  # a longer rendered key is stored by its hash
US = 1_000_000

DECIDE = """
-- KEYS: one bucket per limit. ARGV[1]: 'take' or 'hold'; ARGV[2]: the longest wait allowed (take) or the hold
-- (hold), in microseconds; then each limit's interval (microseconds) and burst.
-- Reply: {admitted (1/0), the wait, each limit's own wait, each bucket's TAT after the decision from now}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode, span, n = ARGV[1], tonumber(ARGV[2]), #KEYS
local current, after, waits, delay = {}, {}, {}, 0
for i = 1, n do
  local interval, burst = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  current[i] = tat
  if mode == 'hold' then
    after[i] = math.max(tat, now + span + (burst - 1) * interval)
    waits[i] = 0
  else
    after[i] = tat + interval
    waits[i] = math.max(0, after[i] - burst * interval - now)
    if waits[i] > delay then delay = waits[i] end
  end
end
local admitted = (mode == 'hold' or delay <= span) and 1 or 0
local reply = {admitted, delay}
for i = 1, n do
  local tat = current[i]
  if admitted == 1 then
    tat = after[i]
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
  reply[2 + i] = waits[i]
  reply[2 + n + i] = tat - now
end
return reply
"""

HEARTBEAT = """
-- KEYS[1]: the upstream's replica set. ARGV[1]: this replica's id; ARGV[2]: how long a silent one counts (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""


def _origin(settings: CacheSettings) -> tuple[str, str, float]:
    return settings.redis_url, settings.namespace, settings.op_timeout


class RedisLink:
    """One upstream's connection to the shared budgets. `up` while Redis answers; `replicas` as last counted."""

    def __init__(self, upstream: str, settings: CacheSettings, errors: Any) -> None:
        self.upstream = upstream
        self.origin = _origin(settings)
        self.op_timeout = settings.op_timeout
        self._prefix = f"{settings.namespace}:rl:{{{upstream}}}:"
        self._errors = errors  # egress_rate_limit_backend_errors_total{upstream}
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=POOL_SIZE, timeout=None, socket_connect_timeout=DIAL_TIMEOUT,
            # No retries of its own: a failed decision is made locally at once; the heartbeat comes back for Redis.
            retry=Retry(NoBackoff(), 0),
        )
        self.client = redis.asyncio.Redis(connection_pool=pool)
        # EVALSHA; on NOSCRIPT (a restarted Redis) redis-py loads the script and calls it again.
        self._decide = self.client.register_script(DECIDE)
        self._beat = self.client.register_script(HEARTBEAT)
        self.id = uuid.uuid4().hex
        self.up = True  # optimistic: the warm-up's heartbeat (or the first decision) says otherwise
        self.replicas: int | None = None
        self._beating: asyncio.Task[None] | None = None
        self._warning = Occasional(WARN_EVERY)
        self._closed = False

    def serves(self, settings: CacheSettings) -> bool:
        return self.origin == _origin(settings)

    def key(self, bucket: Bucket) -> str:
        name, key = bucket
        if len(key) > MAX_KEY:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return f"{self._prefix}{name}:{key}"

    async def take(self, turns: Sequence[Turn], allowance: float) -> Decision | None:
        """The shared decision, or None when Redis is down or did not answer within `op_timeout`."""
        reply = await self._call("take", turns, allowance)
        if reply is None:
            return None
        n = len(turns)
        waits = tuple(w / US for w in reply[2:2 + n])
        return Decision(bool(reply[0]), reply[1] / US, waits, tuple(t / US for t in reply[2 + n:2 + 2 * n]), "redis")

    async def hold(self, turns: Sequence[Turn], delay: float) -> bool:
        """No turn of these buckets before `delay` from now, on every replica; False if Redis could not be told."""
        return await self._call("hold", turns, delay) is not None

    async def _call(self, mode: str, turns: Sequence[Turn], span: float) -> list[int] | None:
        self.start()
        if not self.up or self._closed:
            return None
        args: list[int | str] = [mode, round(span * US)]
        for t in turns:
            args += [max(1, round(t.interval * US)), t.burst]
        try:
            async with asyncio.timeout(self.op_timeout):
                reply = await self._decide(keys=[self.key(t.bucket) for t in turns], args=args)
        except Exception as exc:  # whatever Redis does wrong, the request is decided locally
            self._failed(mode, exc)
            return None
        return [int(value) for value in reply]

    def start(self) -> None:
        """The heartbeat, from the first use in a running loop."""
        if self._beating is None and not self._closed:
            self._beating = asyncio.get_running_loop().create_task(self._heartbeats())

    async def warm_up(self) -> bool:
        """One heartbeat now (dial, script loaded, replicas counted), before the first request needs it; a link
        already beating is left to its heartbeat."""
        if self._beating is not None:
            return self.up
        ok = await self._heartbeat()
        self.start()
        return ok

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY if self.up else REST_AFTER_FAILURE)
            await self._heartbeat()

    async def _heartbeat(self) -> bool:
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                count = await self._beat(keys=[self._prefix + "replicas"], args=[self.id, round(SILENT_AFTER * 1000)])
                if not self.up or self.replicas is None:
                    await self.client.script_load(DECIDE)  # the first decision after it is one round trip
        except Exception as exc:
            self._failed("heartbeat", exc)
            return False
        self.replicas = int(count)
        if not self.up:
            log.info("Rate limit backend redis is back for upstream %s (%d replicas)", self.upstream, self.replicas)
            self.up = True
        return True

    def _failed(self, op: str, exc: Exception) -> None:
        self._errors.inc()
        self.up = False
        if self._warning.due():
            log.warning(
                "Rate limit backend redis unavailable for upstream %s (%s %s); pacing locally at 1/%d of each rate "
                "(next warning in %.0fs at the earliest)", self.upstream, op, Occasional.failure(exc),
                self.replicas or 1, WARN_EVERY,
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(BaseException):
                await self._beating
        if self.up:  # leave the count at once rather than after SILENT_AFTER (best effort)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.op_timeout):
                    await self.client.zrem(self._prefix + "replicas", self.id)
        with contextlib.suppress(Exception):
            await self.client.aclose()

"""The cache scenario's helpers: a Redis namespace of the benchmark's own (emptied afterwards), priming a
cache, and the hit rate read from a sidecar's Prometheus metrics on its admin port.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator

import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import CACHED, CACHED_ROUTE, RedisCache, Sidecar

CACHE_HEADER = "X-Egress-Cache"
LOOKUPS = "egress_cache_requests_total"  # {upstream, route, result}: HIT, MISS, STALE, BYPASS, REFRESH


@contextlib.contextmanager
def redis_namespace(url: str) -> Iterator[RedisCache]:
    """`bench-<pid>` on the Redis at `url`; every key under it is deleted on the way out (normally or not)."""
    namespace = f"bench-{os.getpid()}"
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        version = str(client.info("server").get("redis_version", ""))
    except redis.RedisError as exc:
        client.close()
        raise SystemExit(f"Redis at {redacted(url)} did not answer ({exc}): start it, pass --redis-url, "
                         "or leave the Redis-backed cache out with --no-redis") from None
    try:
        yield RedisCache(url, namespace, version)
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        print(f"redis: deleted the {len(keys)} keys under {namespace}:", file=sys.stderr, flush=True)


def redacted(url: str) -> str:
    """The URL without its password, to print and to keep in the results file."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1]).geturl()


def prime(url: str) -> None:
    """GET `url` twice: the second answer must come from the cache, or the scenario would measure forwarding."""
    answers = []
    for _ in range(2):
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            answers.append(f"{response.status} {CACHE_HEADER}: {response.headers.get(CACHE_HEADER)}")
    if answers[-1] != f"200 {CACHE_HEADER}: HIT":
        raise RuntimeError(f"priming {url}: the second answer should be a cache HIT; got {answers}")


def lookups(sidecar: Sidecar, upstream: str = CACHED, route: str = CACHED_ROUTE) -> dict[str, float]:
    """The sidecar's cache lookups on one route so far, by result."""
    with urllib.request.urlopen(f"{sidecar.admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == LOOKUPS and labels.get("upstream") == upstream and labels.get("route") == route:
                counts[labels["result"]] = counts.get(labels["result"], 0.0) + sample.value
    return counts


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    """HIT / all lookups between two `lookups()` readings (None when there were none)."""
    delta = {result: after[result] - before.get(result, 0.0) for result in after}
    total = sum(delta.values())
    return delta.get("HIT", 0.0) / total if total > 0 else None

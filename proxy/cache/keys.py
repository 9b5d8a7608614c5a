"""Cache keys: what makes two requests "the same", written down without ever holding a credential in clear.

Key layout (the Redis backend prefixes every key with `<namespace>:`):

    gen:<upstream>                          purge generation of the whole upstream
    gen:<upstream>:route:<route>            purge generation of one route
    gen:<upstream>:path:<mac(path)>         write generation of one path (invalidate_on_write)
    vary:<upstream>:<base>                  the header names the upstream's `Vary` added for this base key
    entry:<upstream>:<route>:<mac(...)>     one stored response

`base` is a keyed hash of the request's identity: method, upstream, path, the query with its parameters sorted,
and the values of the route's `vary` headers (the policy's credential headers first: Authorization,
X-Api-Key, ..., so callers that differ in any of them never share an entry). The entry key adds the three
generations and the values of the headers the upstream's `Vary` named. Bumping a generation (INCR) makes
every key built with the old value unreachable at once, so invalidation and purge are O(1): nothing is
scanned, and the orphaned entries simply expire.

Every digest is a keyed hash (BLAKE2b, the secret as key), so a token in a header (or a secret in a path) is
never written in clear.
The secret is random per process for the memory backend; replicas sharing Redis must agree on it, so it
comes from `EGRESS_CACHE_KEY_SECRET`, or, when that is unset, is derived from the redis_url and the
namespace (as secret as the Redis password in the URL: set the variable when the URL carries none).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDictProxy

from proxy.memo import Memo
from proxy.policy import CacheSettings

PATH_MEMO = 4096
ENTRY_MEMO = 4096
MARKER_PREFIX = "vary:"  # the key of the header names an upstream's Vary listed for one request


def key_secret(settings: CacheSettings) -> bytes:
    if settings.backend == "memory":
        return os.urandom(32)  # nobody else reads these keys: a secret nobody can know
    configured = settings.key_secret  # required by the policy loader unless redis_url carries a password
    if configured:  # BLAKE2b takes keys up to 64 bytes: a longer secret is hashed down once, here
        return configured.encode() if len(configured.encode()) <= 64 else hashlib.sha256(configured.encode()).digest()
    return hashlib.sha256(f"egress-cache-key\0{settings.redis_url}\0{settings.namespace}".encode()).digest()


def normalise_query(query: str) -> str:
    """The same parameters in any order are the same request: `b=2&a=1` and `a=1&b=2` share an entry. A
    repeated parameter keeps its values' order (`a=2&a=1` is not `a=1&a=2`): some APIs read it as a list."""
    return "&".join(sorted((pair for pair in query.split("&") if pair), key=lambda pair: pair.partition("=")[0]))


def header_values(headers: CIMultiDictProxy[str], names: Iterable[str]) -> list[tuple[str, str | None]]:
    """Each named header's value (repeats joined); None for an absent header, which differs from an empty one."""
    values: list[tuple[str, str | None]] = []
    for name in sorted(names):
        found = headers.getall(name, [])
        values.append((name, ", ".join(found) if found else None))
    return values


@dataclass(frozen=True, slots=True)
class RequestKey:
    """Where one cacheable request's pieces live in the store."""

    upstream: str
    route: str
    base: str
    generations: tuple[str, str, str]  # upstream, route and path generation keys, in that order
    marker: str


@dataclass(frozen=True, slots=True)
class KeyMaker:
    secret: bytes
    # Both are asked for on every lookup, for the same few hot paths and entries: remembered (timeit: 1.5 µs a
    # keyed digest, 0.35 µs remembered). Their keys are digests, counters and paths, never a credential in clear.
    _paths: Memo[tuple[str, str], str] = field(default_factory=lambda: Memo(PATH_MEMO), compare=False, repr=False)
    _entries: Memo[tuple[str, str, str, tuple[int, ...], str], str] = field(
        default_factory=lambda: Memo(ENTRY_MEMO), compare=False, repr=False
    )

    def digest(self, *parts: object) -> str:
        # ascii() of a tuple of strings, numbers, None and lists of them keeps the parts apart (quoted, escaped,
        # non-ASCII too): ("a", "b c") and ("a b", "c") never collide, at half the cost of JSON. Keyed BLAKE2b
        # is a MAC like HMAC-SHA256, in one pass instead of two (`key_secret` keeps the key within 64 bytes).
        return hashlib.blake2b(ascii(parts).encode(), key=self.secret, digest_size=32).hexdigest()

    def request(
        self,
        upstream: str,
        route: str,
        method: str,
        path: str,
        query: str,
        identity: list[tuple[str, str | None]],
        origin: str = "",
    ) -> RequestKey:
        """`origin` is the upstream's URL: a reload that re-points an upstream (staging -> prod) must not serve
        what the old one answered."""
        base = self.digest(method, upstream, origin, path, normalise_query(query), identity)
        return RequestKey(
            upstream=upstream,
            route=route,
            base=base,
            generations=(
                self.upstream_generation(upstream),
                self.route_generation(upstream, route),
                self.path_generation(upstream, path),
            ),
            marker=f"{MARKER_PREFIX}{upstream}:{base}",
        )

    def entry(self, key: RequestKey, generations: Sequence[int], vary: str) -> str:
        return self._entries.get((key.upstream, key.route, key.base, tuple(generations), vary), self._entry)

    def _entry(self, parts: tuple[str, str, str, tuple[int, ...], str]) -> str:
        upstream, route, base, generations, vary = parts
        return f"entry:{upstream}:{route}:{self.digest(base, list(generations), vary)}"

    def vary(self, headers: CIMultiDictProxy[str], names: Iterable[str]) -> str:
        """The values of the headers the upstream's `Vary` named, as one digest ("" when it named none)."""
        names = tuple(names)
        return self.digest(header_values(headers, names)) if names else ""

    @staticmethod
    def upstream_generation(upstream: str) -> str:
        return f"gen:{upstream}"

    @staticmethod
    def route_generation(upstream: str, route: str) -> str:
        return f"gen:{upstream}:route:{route}"

    def path_generation(self, upstream: str, path: str) -> str:
        return self._paths.get((upstream, path), self._path_generation)

    def _path_generation(self, key: tuple[str, str]) -> str:
        upstream, path = key
        return f"gen:{upstream}:path:{self.digest(path)}"

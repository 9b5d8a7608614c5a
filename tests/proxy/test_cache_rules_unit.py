"""The cache's decisions, pure: what makes two requests the same (`proxy.cache.keys`) and what may be served from
and stored in the cache (`proxy.cache.rules`). The sidecar-level behaviour is in test_cache.py; the property over
every credential header through `ResponseCache.plan` in test_cache_credential_keys.py."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.keys import KeyMaker, RequestKey, header_values, key_secret, normalise_query
from proxy.cache.rules import (
    Mode,
    directives,
    extra_vary,
    refusal,
    request_mode,
    stored_headers,
    vary_names,
)
from proxy.policy import CacheSettings, RouteCache
from proxy.policy.model import CREDENTIAL_HEADERS

SECRET = bytes(range(32))
TOKEN = "Bearer sk-live-7f3a9c2e1d"
VARY = (*CREDENTIAL_HEADERS, "accept-language")  # a route's `vary`: the credential headers, then its own
ORIGIN = "https://graph.facebook.com"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def key(
    *pairs: tuple[str, str],
    maker: KeyMaker | None = None,
    method: str = "GET",
    path: str = "/v19.0/media/1",
    query: str = "fields=url&limit=2",
    origin: str = ORIGIN,
    upstream: str = "whatsapp",
    route: str = "media",
) -> RequestKey:
    identity = header_values(headers(*pairs), VARY)
    return (maker or KeyMaker(SECRET)).request(upstream, route, method, path, query, identity, origin)


def every_text(k: RequestKey, maker: KeyMaker) -> list[str]:
    """Everything a key puts in the store, as text."""
    return [k.base, k.marker, *k.generations, maker.entry(k, (1, 2, 3), maker.vary(headers(("Authorization", TOKEN)),
                                                                                   ["authorization"]))]


# -- keys: the same request, the same key -----------------------------------------------------------------


def test_the_same_request_gives_the_same_key() -> None:
    maker = KeyMaker(SECRET)
    first = key(("Authorization", TOKEN), ("Accept-Language", "pt-BR"), maker=maker)
    again = key(("authorization", TOKEN), ("ACCEPT-LANGUAGE", "pt-BR"), maker=maker)  # header names are caseless
    assert first == again
    assert first == key(("Authorization", TOKEN), ("Accept-Language", "pt-BR"))  # another maker, same secret


def test_query_parameters_in_another_order_are_the_same_request() -> None:
    assert key(query="b=2&a=1").base == key(query="a=1&b=2").base
    assert key(query="a=1&&b=2&").base == key(query="a=1&b=2").base


def test_a_repeated_query_parameters_order_is_kept() -> None:
    assert normalise_query("a=2&b=0&a=1") == "a=2&a=1&b=0"
    assert key(query="a=2&a=1").base != key(query="a=1&a=2").base


def test_headers_outside_the_routes_vary_do_not_split_the_key() -> None:
    assert key(("User-Agent", "a"), ("X-Request-ID", "1")).base == key(("User-Agent", "b")).base


# -- keys: any difference that matters, another key -----------------------------------------------------------


@pytest.mark.parametrize("name", CREDENTIAL_HEADERS)
def test_another_value_of_any_credential_header_gives_another_key(name: str) -> None:
    assert key((name, "caller-one")).base != key((name, "caller-two")).base


@pytest.mark.parametrize("name", ["Authorization", "X-Api-Key", "Cookie"])
def test_a_credential_header_absent_empty_or_repeated_are_three_keys(name: str) -> None:
    bases = {key().base, key((name, "")).base, key((name, "a")).base, key((name, "a"), (name, "b")).base}
    assert len(bases) == 4


def test_another_value_of_a_varyd_header_gives_another_key() -> None:
    assert key(("Accept-Language", "en")).base != key(("Accept-Language", "pt-BR")).base


@pytest.mark.parametrize(
    "change",
    [
        {"query": "fields=url&limit=3"},
        {"query": ""},
        {"origin": "https://staging.graph.facebook.com"},
        {"method": "HEAD"},
        {"path": "/v19.0/media/2"},
        {"upstream": "gemini"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_another_query_origin_method_path_or_upstream_gives_another_key(change: dict[str, str]) -> None:
    assert key(**change).base != key().base  # type: ignore[arg-type]


def test_another_secret_gives_other_keys() -> None:
    other = KeyMaker(bytes(32))
    assert key(maker=other).base != key().base
    assert other.path_generation("whatsapp", "/x") != KeyMaker(SECRET).path_generation("whatsapp", "/x")


def test_parts_never_run_into_each_other() -> None:
    maker = KeyMaker(SECRET)
    assert maker.digest("a", "b c") != maker.digest("a b", "c")
    assert maker.digest("a", None) != maker.digest("a", "None")
    assert key(path="/a", query="b=1").base != key(path="/a?b=1", query="").base


# -- keys: no credential in clear -----------------------------------------------------------------------------


def test_no_key_holds_a_credential_or_the_path_in_clear() -> None:
    maker = KeyMaker(SECRET)
    path = "/v19.0/users/alice@example.com/token=s3cr3t"
    k = key(("Authorization", TOKEN), ("X-Api-Key", "ak-9d8e7f"), maker=maker, path=path, query="key=AIzaSyQ")
    for text in every_text(k, maker):
        for secret in (TOKEN, "sk-live-7f3a9c2e1d", "ak-9d8e7f", "alice@example.com", "s3cr3t", "AIzaSyQ"):
            assert secret not in text
    assert maker.path_generation("whatsapp", path) == k.generations[2]


def test_the_key_layout_names_upstream_and_route_and_hides_the_rest() -> None:
    maker = KeyMaker(SECRET)
    k = key(maker=maker)
    assert k.generations[:2] == ("gen:whatsapp", "gen:whatsapp:route:media")
    assert k.generations[2].startswith("gen:whatsapp:path:") and len(k.generations[2].rsplit(":", 1)[1]) == 64
    assert k.marker == f"vary:whatsapp:{k.base}"
    assert maker.entry(k, (0, 0, 0), "").startswith("entry:whatsapp:media:")


# -- keys: generations and the upstream's Vary --------------------------------------------------------------------


def test_a_bumped_generation_gives_another_entry_key() -> None:
    maker = KeyMaker(SECRET)
    k = key(maker=maker)
    entries = {maker.entry(k, generations, "") for generations in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]}
    assert len(entries) == 4
    assert maker.entry(k, (1, 0, 0), "") == maker.entry(k, [1, 0, 0], "")  # any sequence of the same numbers


def test_the_upstreams_vary_values_give_other_entry_keys() -> None:
    maker = KeyMaker(SECRET)
    k = key(maker=maker)
    gzip = maker.vary(headers(("Accept-Encoding", "gzip")), ["accept-encoding"])
    br = maker.vary(headers(("Accept-Encoding", "br")), ["accept-encoding"])
    absent = maker.vary(headers(), ["accept-encoding"])
    assert len({gzip, br, absent}) == 3
    assert len({maker.entry(k, (0, 0, 0), v) for v in (gzip, br, absent, "")}) == 4
    assert maker.vary(headers(("Accept-Encoding", "gzip")), []) == ""  # no Vary: nothing to add
    assert maker.vary(headers(("accept-encoding", "gzip")), ["Accept-Encoding"]) == maker.vary(
        headers(("Accept-Encoding", "gzip")), ["Accept-Encoding"]
    )


def test_header_values_are_sorted_by_name_with_repeats_joined_and_none_for_absent() -> None:
    got = header_values(headers(("B", "2"), ("a", "1"), ("b", "3")), ["b", "c", "a"])
    assert got == [("a", "1"), ("b", "2, 3"), ("c", None)]


# -- key_secret ------------------------------------------------------------------------------------------------


def test_the_memory_backends_secret_is_random_per_process() -> None:
    settings = CacheSettings(backend="memory", key_secret="ignored")
    first, second = key_secret(settings), key_secret(settings)
    assert len(first) == 32 and first != second and first != b"ignored"


def test_a_shared_redis_secret_comes_from_the_setting_hashed_down_when_too_long() -> None:
    assert key_secret(CacheSettings(backend="redis", key_secret="s" * 64)) == b"s" * 64
    long = "s" * 65
    assert key_secret(CacheSettings(backend="redis", key_secret=long)) == hashlib.sha256(long.encode()).digest()


def test_without_a_setting_replicas_derive_the_same_secret_from_url_and_namespace() -> None:
    one = CacheSettings(backend="redis", redis_url="redis://:pw@cache:6379/0", namespace="egress")
    assert key_secret(one) == key_secret(CacheSettings(backend="redis", redis_url=one.redis_url, namespace="egress"))
    assert key_secret(one) != key_secret(CacheSettings(backend="redis", redis_url=one.redis_url, namespace="other"))
    assert key_secret(one) != key_secret(CacheSettings(backend="redis", redis_url="redis://:pw2@cache:6379/0"))


# -- keys: properties ----------------------------------------------------------------------------------------------


@given(st.text(max_size=80), st.text(max_size=80))
def test_two_different_authorization_values_never_share_a_key(one: str, two: str) -> None:
    maker = KeyMaker(SECRET)
    first, second = key(("Authorization", one), maker=maker), key(("Authorization", two), maker=maker)
    assert (first.base == second.base) == (one == two)
    assert (first.marker == second.marker) == (one == two)


# Whatever the request, a key is its fixed layout plus hex digests: nothing of a header, path or query in clear.
KEY_TEXT = re.compile(
    r"(gen:whatsapp(:route:media|:path:[0-9a-f]{64})?|vary:whatsapp:[0-9a-f]{64}|entry:whatsapp:media:[0-9a-f]{64}"
    r"|[0-9a-f]{64})"
)


@given(token=st.text(max_size=80), path=st.text(max_size=40), query=st.text(max_size=40))
def test_any_credential_path_or_query_leaves_only_the_layout_and_digests_in_a_key(
    token: str, path: str, query: str
) -> None:
    maker = KeyMaker(SECRET)
    k = key(("Authorization", token), ("X-Api-Key", token), maker=maker, path=path, query=query)
    for text in every_text(k, maker):
        assert KEY_TEXT.fullmatch(text), text


# -- rules: what the caller asks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "mode"),
    [
        ((), Mode.LOOKUP),
        ((("Cache-Control", "max-age=60"),), Mode.LOOKUP),
        # Deliberately not honoured (the module honours no-cache and no-store only): the route's ttl decides.
        ((("Cache-Control", "max-age=0"),), Mode.LOOKUP),
        ((("Cache-Control", "no-cache"),), Mode.REFRESH),
        ((("Cache-Control", "No-Cache"),), Mode.REFRESH),
        ((("Cache-Control", "max-age=0, no-cache"),), Mode.REFRESH),
        ((("Pragma", "no-cache"),), Mode.REFRESH),
        ((("Cache-Control", "no-store"),), Mode.BYPASS),
        ((("Cache-Control", "no-cache, no-store"),), Mode.BYPASS),
        ((("Cache-Control", "no-cache"), ("Cache-Control", "NO-STORE")), Mode.BYPASS),
        ((("Pragma", "no-cache"), ("Cache-Control", "no-store")), Mode.BYPASS),
        ((("Pragma", "no-store"),), Mode.LOOKUP),  # Pragma only ever meant no-cache
    ],
)
def test_request_mode_from_cache_control_and_pragma(pairs: tuple[tuple[str, str], ...], mode: Mode) -> None:
    assert request_mode(headers(*pairs)) is mode


def test_directives_are_lowercased_names_without_arguments_across_header_lines() -> None:
    got = directives(headers(("Cache-Control", "max-age=0, No-Cache"), ("cache-control", " private=\"x\" ,, ")))
    assert got == {"max-age", "no-cache", "private"}


# -- rules: what may be stored -----------------------------------------------------------------------------------


RULE = RouteCache(ttl=60.0)
RANGED_RULE = RouteCache(ttl=60.0, statuses=frozenset({200, 206}))
OVERRIDE = RouteCache(ttl=60.0, override=True)


def test_a_plain_200_may_be_stored() -> None:
    assert refusal(RULE, 200, headers(("Content-Type", "application/json"), ("Cache-Control", "max-age=60"))) is None


@pytest.mark.parametrize("status", [201, 204, 301, 404, 429, 500, 503])
def test_a_status_outside_the_routes_statuses_is_refused(status: int) -> None:
    assert refusal(RULE, status, headers()) == f"status {status}"


def test_a_206_is_stored_only_for_a_ranged_request_and_a_route_that_lists_it() -> None:
    assert refusal(RULE, 206, headers(), ranged=True) == "status 206"
    assert refusal(RANGED_RULE, 206, headers(), ranged=False) == "a 206 to a request without Range"
    assert refusal(RANGED_RULE, 206, headers(), ranged=True) is None
    assert refusal(OVERRIDE, 206, headers(), ranged=False) == "status 206"


@pytest.mark.parametrize("value", ["no-store", "No-Store", "max-age=60, no-store"])
def test_cache_control_no_store_is_refused(value: str) -> None:
    assert refusal(RULE, 200, headers(("Cache-Control", value))) == "Cache-Control: no-store"


@pytest.mark.parametrize("value", ["private", "private, max-age=60", 'private="set-cookie"'])
def test_cache_control_private_is_refused(value: str) -> None:
    assert refusal(RULE, 200, headers(("Cache-Control", value))) == "Cache-Control: private"


def test_set_cookie_is_refused_whatever_its_case() -> None:
    assert refusal(RULE, 200, headers(("set-cookie", "session=abc; HttpOnly"))) == "Set-Cookie"


@pytest.mark.parametrize("value", ["*", "Accept, *", " * "])
def test_vary_star_is_refused_even_with_override(value: str) -> None:
    assert refusal(RULE, 200, headers(("Vary", value))) == "Vary: *"
    assert refusal(OVERRIDE, 200, headers(("Vary", value))) == "Vary: *"


def test_vary_star_on_a_second_vary_line_is_refused() -> None:
    assert refusal(RULE, 200, headers(("Vary", "Accept"), ("Vary", "*"))) == "Vary: *"


def test_override_stores_past_no_store_private_and_set_cookie_but_not_another_status() -> None:
    said = headers(("Cache-Control", "no-store, private"), ("Set-Cookie", "a=b"))
    assert refusal(RULE, 200, said) == "Cache-Control: no-store"
    assert refusal(OVERRIDE, 200, said) is None
    assert refusal(OVERRIDE, 500, said) == "status 500"


def test_vary_names_are_lowercased_deduplicated_and_sorted_across_lines() -> None:
    got = vary_names(headers(("Vary", "Accept-Encoding, accept-language"), ("vary", " ACCEPT-ENCODING ,, Origin")))
    assert got == ["accept-encoding", "accept-language", "origin"]
    assert vary_names(headers()) == []


def test_extra_vary_is_what_the_upstreams_vary_adds_beyond_the_routes_vary() -> None:
    rule = RouteCache(ttl=60.0, vary=VARY)
    said = headers(("Vary", "Authorization, Accept-Language, Accept-Encoding, Origin"))
    assert extra_vary(said, rule) == ("accept-encoding", "origin")
    assert extra_vary(headers(("Vary", "Cookie")), rule) == ()


def test_stored_headers_drop_hop_by_hop_set_cookie_and_age_and_keep_the_rest_in_order() -> None:
    upstream = headers(
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive, X-Trace-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Trace-Hop", "1"),  # named by Connection: hop-by-hop too
        ("Set-Cookie", "session=abc"),
        ("Age", "30"),
        ("ETag", '"v1"'),
        ("Link", "<a>; rel=next"),
        ("link", "<b>; rel=last"),
        ("Cache-Control", "max-age=60"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Checksum"),
    )
    assert stored_headers(upstream) == (
        ("Content-Type", "application/json"),
        ("ETag", '"v1"'),
        ("Link", "<a>; rel=next"),
        ("link", "<b>; rel=last"),
        ("Cache-Control", "max-age=60"),
    )


def test_stored_headers_drop_the_standard_hop_by_hop_set_without_a_connection_header() -> None:
    upstream = headers(("Transfer-Encoding", "chunked"), ("Proxy-Authenticate", "Basic"), ("TE", "trailers"),
                       ("Content-Length", "2"), ("set-cookie", "a=b"))
    assert stored_headers(upstream) == (("Content-Length", "2"),)

"""Property: two requests that differ in any credential header (a default one or one the policy names, in any
case, with any values, or present in one only) never share a cache key."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache import ReadPlan, ResponseCache
from proxy.metrics import Metrics
from proxy.policy import parse_policy
from proxy.policy.model import CREDENTIAL_HEADERS
from proxy.routing import Router

POLICY = parse_policy(
    """
cache: {credential_headers: [X-Tenant-Key, X-Partner-Token]}
upstreams:
  g:
    url: http://127.0.0.1:1
    routes:
      - {name: items, match: GET /items/**, cache: {ttl: 60s, vary: [Accept-Language]}}
""",
    "p.yaml",
    {},
)
CACHE = ResponseCache.open(POLICY.cache, Metrics())
TARGET = Router(POLICY.upstreams).resolve("GET", "/g/items/1?a=1")
NAMES = POLICY.cache.credential_headers


def test_the_policy_adds_to_the_default_credential_headers():
    assert (*CREDENTIAL_HEADERS, "x-tenant-key", "x-partner-token") == NAMES
    assert TARGET.route.cache is not None and set(NAMES) <= set(TARGET.route.cache.vary)


def base_key(headers: CIMultiDict[str]) -> str:
    plan = CACHE.plan(TARGET, "GET", CIMultiDictProxy(headers))
    assert isinstance(plan, ReadPlan)
    return plan.key.base


@st.composite
def any_case(draw: st.DrawFn, name: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in name)


_value = st.text(string.ascii_letters + string.digits + " -._~+/=:;,", min_size=1, max_size=24).map(str.strip).filter(
    bool
)
_other = st.dictionaries(st.sampled_from(["Accept", "User-Agent", "X-Request-Id", "Accept-Language"]), _value,
                         max_size=3)


@given(
    name=st.sampled_from(NAMES).flatmap(any_case),
    values=st.tuples(st.one_of(st.none(), _value), st.one_of(st.none(), _value)).filter(lambda v: v[0] != v[1]),
    common=_other,
    shared_credentials=st.dictionaries(st.sampled_from(NAMES), _value, max_size=2),
)
def test_requests_differing_in_a_credential_header_never_share_a_key(name, values, common, shared_credentials):
    keys = []
    for value in values:
        headers: CIMultiDict[str] = CIMultiDict({**common, **shared_credentials})
        headers.popall(name, None)
        if value is not None:
            headers[name] = value
        keys.append(base_key(headers))
    assert keys[0] != keys[1]


@pytest.mark.parametrize("name", ["X-API-KEY", "x-tenant-key", "Cookie"])
def test_the_same_credential_in_another_case_of_name_shares_the_key(name):
    assert base_key(CIMultiDict({name: "v"})) == base_key(CIMultiDict({name.lower(): "v"}))

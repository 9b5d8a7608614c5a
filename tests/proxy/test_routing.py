"""Router: `/<upstream>/<rest>` plus the METHOD glob -> Target; short targets are matched once and remembered,
within a bound, and a refused target is refused every time."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequest, NoRoute
from proxy.routing import MEMO_SIZE, MEMO_TARGET_LENGTH, Router
from tests.policy._helpers import load

POLICY = """
upstreams:
  whatsapp:
    url: http://127.0.0.1:9
    routes:
      - {name: send_message, match: POST /v19.0/*/messages}
      - {name: media, match: GET /v19.0/**}
"""


@pytest.fixture
def router() -> Router:
    return Router(load(POLICY).upstreams)


def test_a_remembered_target_is_the_one_a_fresh_match_gives(router):
    first = router.resolve("POST", "/whatsapp/v19.0/123/messages?x=1")
    again = router.resolve("POST", "/whatsapp/v19.0/123/messages?x=1")
    assert again is first  # from the memo
    assert (again.route.name, again.path, again.query) == ("send_message", "/v19.0/123/messages", "x=1")
    assert router.resolve("GET", "/whatsapp/v19.0/123/messages").route.name == "media"  # method is in the key
    assert router.resolve("DELETE", "/whatsapp/v19.0/123/messages").route.name == "default"


def test_the_memo_is_bounded_and_long_targets_stay_out_of_it(router):
    for n in range(MEMO_SIZE + 500):
        assert router.resolve("GET", f"/whatsapp/v19.0/{n}").route.name == "media"
    assert len(router._memo) == MEMO_SIZE
    router._memo.clear()
    long = "/whatsapp/v19.0/1?" + "q" * MEMO_TARGET_LENGTH
    assert router.resolve("GET", long).query == "q" * MEMO_TARGET_LENGTH
    assert len(router._memo) == 0


@pytest.mark.parametrize(
    ("method", "target", "error"),
    [
        ("GET", "/nope/x", NoRoute),
        ("GET", "/whatsapp/v19.0/../../etc/passwd", BadRequest),
        ("GET", "/whatsapp/%2e%2e/x", BadRequest),
        ("CONNECT", "/whatsapp/x", BadRequest),
        ("GET", "http://evil.example/x", BadRequest),
    ],
)
def test_a_refused_target_is_refused_every_time(router, method, target, error):
    for _ in range(2):  # the second time must not come from a memo
        with pytest.raises(error):
            router.resolve(method, target)

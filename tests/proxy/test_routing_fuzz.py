"""Fuzzing the router: any raw request target either resolves to a configured upstream, forwarded to that upstream's
host and port under its URL's path prefix with no `.`/`..` segment, or is refused with the sidecar's EgressError.
Never another host, never another exception."""

from __future__ import annotations

import re
from typing import cast
from urllib.parse import unquote

import aiohttp
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.errors import EgressError
from proxy.forward import Forwarder
from proxy.routing import Router
from tests.policy._helpers import load

POLICY = load(
    """\
    upstreams:
      whatsapp:
        url: http://127.0.0.1:9/base/v
        routes:
          - {name: send, match: POST /v19.0/*/messages}
          - {name: evil, match: GET /**/a/**/b/**/c}
          - {name: paced, match: "POST /v20.0/{phone_id}/messages"}  # quoted: braces in a flow mapping
      gemini:
        url: https://g.example
    """
)
ROUTER = Router(POLICY.upstreams)
# url_for only joins the base and the path: no session is used.
FORWARDERS = {name: Forwarder(u, cast(aiohttp.ClientSession, None)) for name, u in POLICY.upstreams.items()}

PIECES = st.sampled_from([
    "/", "//", "/./", "/../", ".", "..", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "\\", "?", "#", "@", ":", "%",
    "%00", "%zz", "http://evil.example", "//evil.example", "evil.example:80", "whatsapp", "gemini", "v19.0",
    "messages", "v20.0", "a", "b", "c", "é", "\u202e", "\uff05\uff12\uff45",  # (a fullwidth %2e)
    "..%2f", ".%2e", ";", "&", "=",
])
TARGETS = st.one_of(
    st.lists(PIECES, max_size=10).map("".join),
    st.tuples(st.sampled_from(["/whatsapp", "/gemini", "/nope", "", "http://evil.example/whatsapp"]),
              st.lists(PIECES, max_size=10).map("".join)).map("".join),
    st.text(max_size=30),
)
METHODS = st.sampled_from(["GET", "POST", "CONNECT", "OPTIONS", "DELETE"])


@given(method=METHODS, target=TARGETS)
@example(method="GET", target="/whatsapp/..%2f..%2fx")
@example(method="GET", target="/whatsapp//evil.example/x")
@example(method="GET", target="/whatsapp@evil.example/x")
@example(method="GET", target="/gemini#@evil.example/x")
@example(method="GET", target="/whatsapp/%2e%2e/%2e%2e/x?y#z")
@example(method="GET", target="/whatsapp/x\\..\\..\\y")
def test_any_target_stays_on_its_upstream_under_its_prefix_or_is_refused(method: str, target: str) -> None:
    try:
        resolved = ROUTER.resolve(method, target)
    except EgressError:
        return
    upstream = resolved.upstream
    assert upstream.name in POLICY.upstreams and target.startswith(f"/{upstream.name}")
    url = FORWARDERS[upstream.name].url_for(resolved.path, resolved.query)
    assert (url.scheme, url.host, url.port) == (upstream.url.scheme, upstream.url.host, upstream.url.port), url
    prefix = upstream.url.raw_path.rstrip("/")
    assert url.raw_path == prefix or url.raw_path.startswith(prefix + "/"), url
    below = url.raw_path[len(prefix):]
    for segment in below.split("/"):
        assert not any(piece in (".", "..") for piece in re.split(r"[/\\]", unquote(segment))), url


@given(target=TARGETS.map(lambda rest: "/whatsapp/v20.0/" + rest) | st.builds(
    "/whatsapp/v20.0/{}/messages".format, st.lists(PIECES, max_size=4).map("".join)))
@example(target="/whatsapp/v20.0/%2F/messages")
@example(target="/whatsapp/v20.0/1%2e/messages?x=1")
def test_a_capture_is_the_decoded_text_of_its_own_segment_and_nothing_else(target: str) -> None:
    try:
        resolved = ROUTER.resolve("POST", target)
    except EgressError:
        return
    if resolved.route.name != "paced":
        assert resolved.captures == ()
        return
    segments = resolved.path.split("/")
    assert len(segments) == 4 and segments[1] == "v20.0" and segments[3] == "messages" and segments[2]
    assert resolved.captures == (("phone_id", unquote(segments[2])),)

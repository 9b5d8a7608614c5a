"""Route globs: `*` within one segment, `**` across segments, the rest literal; linear in the path whatever the glob."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.policy.glob import Glob
from tests.policy._helpers import load


def old_regex(glob: str) -> re.Pattern[str]:
    """The semantics the matcher keeps: the loader's former translation (a backtracking regex). DOTALL: `**` means
    any character; a request path never holds a line break, and the matcher does not special-case one."""
    out = []
    for token in re.split(r"(\*\*|\*)", glob):
        out.append(".*" if token == "**" else "[^/]*" if token == "*" else re.escape(token))
    return re.compile("".join(out), re.DOTALL)


# Small alphabets so that generated paths actually meet the globs' literals, wildcards and separators.
GLOB = st.text(alphabet="ab/*.%-", max_size=12).map(lambda s: "/" + s)
PATH = st.text(alphabet="ab/.%-*", max_size=16).map(lambda s: "/" + s)


@given(glob=GLOB, path=PATH)
@example(glob="/***", path="/a/b")
@example(glob="/a/*", path="/a/")
@example(glob="/a/*", path="/a/b/")
@example(glob="/**/a/**/b/**/c", path="/a/b/c/a/b/c")
@example(glob="/*a*", path="/ba")
def test_the_matcher_agrees_with_the_regex_semantics(glob: str, path: str) -> None:
    assert Glob(glob).fullmatch(path) == (old_regex(glob).fullmatch(path) is not None)


@given(glob=GLOB, path=PATH)
def test_a_glob_matches_the_path_it_describes(glob: str, path: str) -> None:
    """The literal text of a glob, its stars replaced by a fitting piece of `path`, always matches."""
    anything = path.replace("*", "")
    concrete = re.sub(r"\*+", lambda run: anything if len(run.group()) > 1 else anything.replace("/", ""), glob)
    assert Glob(glob).fullmatch(concrete)


@pytest.mark.parametrize(
    ("glob", "path"),
    [
        ("/**/a/**/b/**/c", "/" + "a/" * 3900 + "b"),  # the reported freeze: 7.6 s with the regex
        ("/**a**a**a**a**a**b", "/" + "a" * 8192),
        ("/*a*a*a*a*a*a*a*b", "/" + "a" * 8192),  # `*` within one long segment: polynomial for a regex
        ("/" + "**/" * 40 + "x", "/" + "a/" * 4096),
    ],
)
def test_a_pathological_glob_on_an_8kb_path_returns_at_once(glob: str, path: str) -> None:
    matcher = Glob(glob)
    started = time.perf_counter()
    assert matcher.fullmatch(path) is False
    assert matcher.fullmatch(path + "/") is False
    assert time.perf_counter() - started < 0.5


def test_routes_use_the_linear_matcher() -> None:
    policy = load(
        """\
        upstreams:
          g:
            url: https://g.example
            routes:
              - {name: evil, match: GET /**/a/**/b/**/c}
        """
    )
    g = policy.upstreams["g"]
    started = time.perf_counter()
    assert g.route_for("GET", "/" + "a/" * 3900 + "b").name == "default"
    assert time.perf_counter() - started < 0.5
    assert g.route_for("GET", "/x/a/y/b/z/c").name == "evil"


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("/v19.0/*/messages", ["/v19.0/1/messages", "/v19.0//messages"], ["/v19.0/1/2/messages", "/v19.0/1/messages/"]),
        ("/v1/**", ["/v1/", "/v1/a/b"], ["/v1", "/v2/a"]),
        ("/v1/*", ["/v1/", "/v1/a"], ["/v1/a/b", "/v1"]),
        ("/exact", ["/exact"], ["/exact/", "/exac"]),
        ("/a.b", ["/a.b"], ["/aXb"]),  # literal, not a regex
    ],
)
def test_the_common_shapes(glob: str, matches: list[str], misses: list[str]) -> None:
    for path in matches:
        assert Glob(glob).fullmatch(path), path
    for path in misses:
        assert not Glob(glob).fullmatch(path), path

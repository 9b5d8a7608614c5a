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


# -- captures ----------------------------------------------------------------------------------------------------

SEGMENT_TEXT = st.text(alphabet="ab.%-:", max_size=4)  # literal text around a capture, within its segment
VALUE = st.text(alphabet="ab0-._~", min_size=1, max_size=6)  # what a capture may match: a segment's text, not empty


@st.composite
def captured(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """A glob with captures (each alone in its segment, no `**` on both sides) and a path it describes."""
    glob_parts, path_parts, values = [], [], {}
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["literal", "star", "capture"]))
        if kind == "capture":
            prefix, suffix, value = draw(SEGMENT_TEXT), draw(SEGMENT_TEXT), draw(VALUE)
            glob_parts.append(f"{prefix}{{c{i}}}{suffix}")
            path_parts.append(f"{prefix}{value}{suffix}")
            values[f"c{i}"] = value
        elif kind == "star":
            glob_parts.append("*")
            path_parts.append(draw(st.text(alphabet="ab", max_size=3)))
        else:
            text = draw(st.text(alphabet="ab.", max_size=3))
            glob_parts.append(text)
            path_parts.append(text)
    glob, path = "/" + "/".join(glob_parts), "/" + "/".join(path_parts)
    if draw(st.booleans()):  # a `**` at one end: the captures are then placed from the other
        tail = draw(st.lists(st.text(alphabet="ab", min_size=1, max_size=2), max_size=3))
        if draw(st.booleans()):
            glob, path = "/**" + glob, "/" + "/".join(tail) + path
        else:
            glob, path = glob + "/**", path + "/" + "/".join(tail)
    return glob, path, values


def capture_regex(glob: str) -> re.Pattern[str]:
    """The reference: a capture is `[^/]+`, the rest as `old_regex`."""
    out = []
    for token in re.split(r"(\*\*|\*|\{[a-z_0-9]+\})", glob):
        if token.startswith("{"):
            out.append(f"(?P<{token[1:-1]}>[^/]+)")
        else:
            out.append(".*" if token == "**" else "[^/]*" if token == "*" else re.escape(token))
    return re.compile("".join(out), re.DOTALL)


@given(case=captured())
def test_a_capture_glob_matches_the_path_it_describes_and_reads_back_each_value(
    case: tuple[str, str, dict[str, str]],
) -> None:
    glob, path, values = case
    matcher = Glob(glob)
    assert matcher.fullmatch(path)
    assert dict(matcher.captures(path)) == values
    assert matcher.names == frozenset(values)


@given(case=captured(), other=PATH)
def test_a_capture_glob_agrees_with_the_regex_and_its_values_with_the_regexs_groups(
    case: tuple[str, str, dict[str, str]], other: str,
) -> None:
    glob, path, _ = case
    matcher, reference = Glob(glob), capture_regex(glob)
    for candidate in (path, other, path + "/", path.replace("/", "//", 1)):
        found = reference.fullmatch(candidate)
        assert matcher.fullmatch(candidate) == (found is not None), candidate
        if found is not None:  # placed by position, the values are what a regex would group (literal affixes)
            assert dict(matcher.captures(candidate)) == {k: v for k, v in found.groupdict().items()}


def test_a_capture_never_matches_an_empty_segment_and_its_value_is_decoded() -> None:
    matcher = Glob("/v19.0/{phone_id}/messages")
    assert not matcher.fullmatch("/v19.0//messages")
    assert matcher.captures("/v19.0/10%2001/messages") == (("phone_id", "10 01"),)
    assert Glob("/models/{model}:generateContent").captures("/models/gemini-2.0:generateContent") == (
        ("model", "gemini-2.0"),)


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("/v1/{a}{b}", "alone in its segment"),
        ("/v1/{a}*", "alone in its segment"),
        ("/**/{a}/**", "'**' both before and after"),
        ("/{a}/{a}", "appears twice"),
        ("/v1/{Phone}", "a brace in a glob starts a capture"),
        ("/v1/{", "a brace in a glob starts a capture"),
    ],
)
def test_captures_that_could_not_be_read_back_are_refused(glob: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Glob(glob)


def test_a_capture_glob_on_an_8kb_path_returns_at_once() -> None:
    matcher = Glob("/**/{a}/x")
    started = time.perf_counter()
    assert matcher.fullmatch("/" + "a/" * 4096) is False
    assert time.perf_counter() - started < 0.5

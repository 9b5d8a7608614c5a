"""Fuzzing the policy loader: any YAML document, generated or a mutation of the shipped policy, gives a Policy or a
PolicyError whose every problem reads `file:line: key: message` (or `file: message`), never another exception;
anchor bombs are refused quickly; `python -m proxy check` answers 0 or 1 and never prints a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.policy import Policy, PolicyError, parse_policy
from proxy.policy.schema import all_keys

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "policy.yaml"
FILE = "fuzz.yaml"
ENV = {"EGRESS_CACHE_KEY_SECRET": "s", "GEMINI_API_KEY": "k", "WHATSAPP_TOKEN": "t"}
# `file:line: key.path: message` or `file: message`; the path is a dotted key path with [i] indices.
PROBLEM = re.compile(rf"^{re.escape(FILE)}(:[1-9][0-9]*)?: (\S[^\n]*)$")

# Keys the schema knows (so generated documents reach deep into the loader) and some it does not.
KEYS = st.sampled_from(sorted({*all_keys(), "g"}))
ODD_TEXT = st.sampled_from(["²", "٣", "9" * 5000, "-" + "9" * 50, "1e400", "nan", "inf", "${UNSET}", "${X:-1s}",
                            "0x10", "1_000", "GET /**/a/**/b", "POST /v19.0/*/messages", "https://u:pw@h.example",
                            "http://127.0.0.1:1", "redis://:pw@h:1/0", "127.0.0.1:99999", "[::1]:0", "5xx", "~",
                            "", " ", "\t", "yes", "1MiB", "150ms", "30s", "-1s", "\u202e", "\x7f"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), ODD_TEXT, st.text(max_size=20),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=40,
)


def check_outcome(text: str) -> Policy | None:
    """The property: a Policy, or a PolicyError of well-formed problems; anything else fails the test."""
    try:
        return parse_policy(text, FILE, ENV)
    except PolicyError as exc:
        assert exc.problems, "a PolicyError with nothing in it"
        for problem in exc.problems:
            assert PROBLEM.match(str(problem)), str(problem)
        return None


@given(document=DOCUMENTS)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_generated_document_is_a_policy_or_located_problems(document: Any) -> None:
    check_outcome(yaml.safe_dump(document, allow_unicode=True))


@given(upstreams=st.dictionaries(st.one_of(KEYS, st.text(max_size=6)), DOCUMENTS, max_size=3), extra=DOCUMENTS)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_generated_upstreams_are_a_policy_or_located_problems(upstreams: dict[Any, Any], extra: Any) -> None:
    """Generated documents rarely reach the upstream readers by chance: put them there."""
    document = {"upstreams": {name: ({"url": "http://h", **body} if isinstance(body, dict) else body)
                              for name, body in {**upstreams, "g": extra}.items()}}
    check_outcome(yaml.safe_dump(document, allow_unicode=True))


SHIPPED_LINES = SHIPPED.read_text().splitlines()
MUTATION = st.tuples(
    st.sampled_from(["delete", "duplicate", "replace_value", "replace_key", "indent", "swap", "truncate"]),
    st.integers(0, len(SHIPPED_LINES) - 1),
    st.integers(0, len(SHIPPED_LINES) - 1),
    st.one_of(ODD_TEXT, st.text(max_size=12), KEYS),
)


def mutate(lines: list[str], mutation: tuple[str, int, int, str]) -> list[str]:
    kind, i, j, value = mutation
    i, j = i % len(lines), j % len(lines)  # earlier mutations may have shortened the file
    line = lines[i]
    key, colon, _ = line.partition(":")
    if kind == "delete":
        return lines[:i] + lines[i + 1:]
    if kind == "duplicate":
        return [*lines[: i + 1], line, *lines[i + 1:]]
    if kind == "replace_value" and colon:
        return [*lines[:i], f"{key}: {value}", *lines[i + 1:]]
    if kind == "replace_key" and colon:
        indent = line[: len(line) - len(line.lstrip())]
        return [*lines[:i], f"{indent}{value}:{line.partition(':')[2]}", *lines[i + 1:]]
    if kind == "indent":
        return [*lines[:i], "  " + line, *lines[i + 1:]]
    if kind == "swap":
        swapped = list(lines)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        return swapped
    if kind == "truncate":
        return [*lines[:i], line[: len(line) // 2]]
    return lines


@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutations_of_the_shipped_policy_are_a_policy_or_located_problems(
    mutations: list[tuple[str, int, int, str]],
) -> None:
    lines = SHIPPED_LINES
    for mutation in mutations:
        lines = mutate(lines, mutation) or ["x"]
    check_outcome("\n".join(lines) + "\n")


def test_the_shipped_policy_itself_loads() -> None:
    assert check_outcome(SHIPPED.read_text()) is not None


@given(levels=st.integers(4, 12), width=st.integers(3, 12), as_key=st.booleans())
@settings(max_examples=30)
def test_anchor_bombs_are_refused_quickly(levels: int, width: int, as_key: bool) -> None:
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    use = f"  ? *l{levels}\n  : 1\n" if as_key else f"  g: {{url: 'http://h', routes: *l{levels}}}\n"
    started = time.perf_counter()
    outcome = check_outcome("\n".join(lines) + "\nupstreams:\n" + use)
    assert outcome is None  # a bomb is never a policy (its top-level keys are unknown, at the very least)
    assert time.perf_counter() - started < 0.5


CLI_DOCUMENTS = st.one_of(
    DOCUMENTS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.lists(MUTATION, min_size=1, max_size=3).map(
        lambda ms: "\n".join(_apply(SHIPPED_LINES, ms)) + "\n"
    ),
)


def _apply(lines: list[str], mutations: list[tuple[str, int, int, str]]) -> list[str]:
    for mutation in mutations:
        lines = mutate(lines, mutation) or ["x"]
    return lines


@given(text=CLI_DOCUMENTS)
@settings(max_examples=6)
def test_check_exits_0_or_1_and_never_prints_a_traceback(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("cli") / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--no-bind", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=30, env={"PATH": "/usr/bin:/bin", **ENV},
    )
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    *problems, last = done.stderr.strip().splitlines()
    if done.returncode == 0:
        assert last == f"{path}: ok" and not problems, done.stderr
    else:
        assert last == f"{path}: {len(problems)} error(s)", done.stderr
        assert all(re.match(rf"{re.escape(str(path))}(:[1-9][0-9]*)?: \S", p) for p in problems), done.stderr

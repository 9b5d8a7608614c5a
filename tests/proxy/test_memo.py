"""The one memo (proxy.memo.Memo): bounded, least recently used out first, nothing remembered for a failure."""

from __future__ import annotations

import pytest

from proxy.memo import Memo


def test_a_value_is_made_once_and_then_remembered() -> None:
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    memo: Memo[str, str] = Memo(4)
    assert [memo.get(k, make) for k in ("a", "b", "a", "a")] == ["A", "B", "A", "A"]
    assert made == ["a", "b"]


def test_past_its_bound_the_least_recently_used_value_goes() -> None:
    memo: Memo[int, int] = Memo(3)
    for key in (1, 2, 3):
        memo.get(key, lambda k: k)
    memo.get(1, lambda k: k)  # used: 2 is now the oldest
    memo.get(4, lambda k: k)
    assert len(memo) == 3
    assert 2 not in memo and all(k in memo for k in (1, 3, 4))


def test_a_failure_to_make_remembers_nothing() -> None:
    memo: Memo[str, str] = Memo(2)

    def refuse(key: str) -> str:
        raise ValueError(key)

    with pytest.raises(ValueError):
        memo.get("bad", refuse)
    assert "bad" not in memo
    assert memo.get("bad", str.upper) == "BAD"


def test_none_is_a_value_like_any_other() -> None:
    calls: list[str] = []

    def nothing(key: str) -> None:
        calls.append(key)

    memo: Memo[str, None] = Memo(2)
    assert memo.get("x", nothing) is None and memo.get("x", nothing) is None
    assert calls == ["x"]


def test_a_memo_holds_at_least_one_value() -> None:
    with pytest.raises(ValueError):
        Memo(0)

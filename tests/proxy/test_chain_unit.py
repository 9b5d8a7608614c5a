"""The chain itself: `chain()` composes stages in order (a stage may answer without `next`, wrap it, or call it
more than once), and `CHAIN` is the order `proxy/pipeline.py`'s docstring tells a reader. Small recording stages
stand in for the real ones; the exchange they pass along is an opaque token, which is all `chain()` sees of it."""

from __future__ import annotations

import inspect
import re
from typing import cast

import pytest

import proxy.pipeline
from proxy.errors import EgressError, NoRoute, Overloaded
from proxy.exchange import Exchange, Next, Reply
from proxy.pipeline import CHAIN, Pipeline, chain

EX = cast(Exchange, object())  # chain() hands the exchange along untouched: a token shows it is the same one


class Recording:
    """Passes the exchange on and notes when it went down and came back up."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex is EX
        self.log.append(f"{self.name}>")
        reply = await next(ex)
        self.log.append(f"<{self.name}")
        return reply


class Answering:
    """The end of the line: answers without calling next (a HIT, an open breaker, an attempt)."""

    def __init__(self, name: str, log: list[str], reply: Reply) -> None:
        self.name, self.log, self.reply = name, log, reply

    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        self.log.append(self.name)
        return self.reply


class Twice:
    """Calls the rest of the chain twice (retry, hedge) and returns the second reply."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        first = await next(ex)
        self.log.append(f"twice got {first.reason if isinstance(first, EgressError) else first}")
        return await next(ex)


class Wrapping:
    """Changes what comes back up (the cache fills after next returns; here: the reply is replaced)."""

    def __init__(self, log: list[str], replacement: Reply) -> None:
        self.log, self.replacement = log, replacement

    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        below = await next(ex)
        self.log.append(f"wrapped {below.reason if isinstance(below, EgressError) else below}")
        return self.replacement


class Counting:
    """Answers with a new error each time, numbered, so repeated calls are told apart."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.calls = log, 0

    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        self.calls += 1
        self.log.append(f"attempt {self.calls}")
        return NoRoute(f"answer {self.calls}")


async def test_stages_run_in_list_order_down_and_in_reverse_on_the_way_up() -> None:
    log: list[str] = []
    answer = NoRoute("the end")
    first = chain([Recording("a", log), Recording("b", log), Recording("c", log), Answering("end", log, answer)])
    assert await first(EX) is answer
    assert log == ["a>", "b>", "c>", "end", "<c", "<b", "<a"]


async def test_a_stage_that_answers_without_next_stops_the_chain_there() -> None:
    log: list[str] = []
    refusal = Overloaded("no slot")
    first = chain([Recording("a", log), Answering("gate", log, refusal), Recording("never", log),
                   Answering("never end", log, NoRoute())])
    assert await first(EX) is refusal
    assert log == ["a>", "gate", "<a"]


async def test_a_stage_may_call_next_twice_and_the_rest_of_the_chain_runs_twice() -> None:
    log: list[str] = []
    attempt = Counting(log)
    first = chain([Recording("outer", log), Twice(log), Recording("inner", log), attempt])
    reply = await first(EX)
    assert isinstance(reply, NoRoute) and reply.detail == "answer 2"
    assert attempt.calls == 2
    assert log == ["outer>", "inner>", "attempt 1", "<inner", "twice got no_route", "inner>", "attempt 2", "<inner",
                   "<outer"]


async def test_a_wrapping_stage_sees_what_came_up_and_may_change_it() -> None:
    log: list[str] = []
    replacement = Overloaded("replaced")
    first = chain([Wrapping(log, replacement), Recording("a", log), Answering("end", log, NoRoute())])
    assert await first(EX) is replacement
    assert log == ["a>", "end", "<a", "wrapped no_route"]


async def test_a_chain_built_once_runs_again_with_fresh_calls() -> None:
    log: list[str] = []
    attempt = Counting(log)
    first = chain([Recording("a", log), attempt])
    await first(EX)
    await first(EX)
    assert attempt.calls == 2 and log == ["a>", "attempt 1", "<a", "a>", "attempt 2", "<a"]


async def test_a_last_stage_that_calls_next_is_a_bug_not_a_silent_answer() -> None:
    with pytest.raises(AssertionError, match="the last stage answers without calling next"):
        await chain([Recording("a", [])])(EX)


async def test_an_empty_chain_has_nobody_to_answer() -> None:
    with pytest.raises(AssertionError):
        await chain([])(EX)


# -- CHAIN follows the docstring ---------------------------------------------------------------------------------

# A table row: four spaces, the stage's name (words with single spaces), two or more spaces, its description.
# Continuation lines are indented further and name nothing.
ROW = re.compile(r"^ {4}(?P<name>[a-z]+(?: [a-z]+)*) {2,}\S")


def documented_stages() -> list[str]:
    doc = proxy.pipeline.__doc__
    assert doc is not None
    return [match["name"] for line in doc.splitlines() if (match := ROW.match(line))]


def stage_class(name: str) -> str:
    """`breaker gate` -> `BreakerStage`: the stage's module is its first word (proxy/stages/breaker.py)."""
    return f"{name.split()[0].capitalize()}Stage"


def test_the_docstring_table_names_each_stage_once_with_its_continuation_lines_skipped() -> None:
    names = documented_stages()
    assert len(names) == len(set(names)) == len(CHAIN)
    assert names[:2] == ["route", "breaker gate"]  # the open-breaker fast path right after routing
    assert "the rest fetch below" not in " ".join(names) and "the breaker" not in names


def test_chain_runs_the_stages_in_the_docstrings_order() -> None:
    assert [type(stage).__name__ for stage in CHAIN] == [stage_class(name) for name in documented_stages()]


def test_each_stage_lives_in_the_module_its_docstring_row_names() -> None:
    modules = [type(stage).__module__ for stage in CHAIN]
    assert modules == [f"proxy.stages.{name.split()[0]}" for name in documented_stages()]


def test_the_pipeline_runs_chain_unless_told_otherwise() -> None:
    assert inspect.signature(Pipeline).parameters["stages"].default is CHAIN

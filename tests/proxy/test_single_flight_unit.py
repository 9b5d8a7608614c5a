"""The cache's single-flight, pure asyncio: of identical concurrent misses one leads (goes upstream), the others
follow and get what it landed. How the cache stage uses it (a leader's answer stored, a STALE for followers) is in
test_cache.py."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache.flight import Flight, SingleFlight

KEY = "entry:gemini:models:abc"


async def settled(*tasks: asyncio.Task[str | None]) -> None:
    """Let every task run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)


def follow(flight: Flight[str]) -> asyncio.Task[str | None]:
    assert not flight.leads
    return asyncio.create_task(flight.outcome())


async def test_the_first_joiner_leads_and_later_ones_follow_and_get_the_landed_value() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    followers = [follow(flights.join(KEY)) for _ in range(3)]
    assert leader.leads and len(flights) == 1
    await settled(*followers)
    leader.land("answer")
    assert await asyncio.gather(*followers) == ["answer"] * 3


async def test_different_keys_fly_apart() -> None:
    flights: SingleFlight[str] = SingleFlight()
    assert flights.join("a").leads and flights.join("b").leads
    assert len(flights) == 2


async def test_a_cancelled_follower_does_not_ground_the_leader() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    quitter = follow(flights.join(KEY))
    stayer = follow(flights.join(KEY))
    await settled(quitter, stayer)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    leader.land("answer")
    assert await stayer == "answer"  # the flight is still in the air for the others
    assert await flights.join(KEY).outcome() == "answer"  # and for a late joiner until finish


async def test_a_follower_that_times_out_does_not_ground_the_leader() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flights.join(KEY).outcome(), 0.01)
    late = follow(flights.join(KEY))
    await settled(late)
    leader.land("answer")
    assert await late == "answer"


async def test_land_before_finish_serves_late_joiners_at_once() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    leader.land("answer")  # its answer is being written, then stored
    late = flights.join(KEY)
    assert not late.leads
    async with asyncio.timeout(0.05):
        assert await late.outcome() == "answer"


async def test_finish_lets_the_next_request_lead_anew() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    leader.land("answer")
    leader.finish()
    assert len(flights) == 0
    next_leader = flights.join(KEY)
    assert next_leader.leads
    follower = follow(flights.join(KEY))
    await settled(follower)
    next_leader.land("fresher")
    assert await follower == "fresher"


async def test_a_leader_that_finishes_without_landing_sends_its_followers_on_their_own() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    follower = follow(flights.join(KEY))
    await settled(follower)
    leader.finish()  # a leader always finishes, even when it was cancelled before it had anything
    assert await follower is None
    assert flights.join(KEY).leads


async def test_a_leader_that_lands_none_sends_its_followers_on_their_own() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    followers = [follow(flights.join(KEY)) for _ in range(2)]
    await settled(*followers)
    leader.land(None)  # nothing shareable (an error, an answer the cache may not store)
    assert await asyncio.gather(*followers) == [None, None]


async def test_the_first_landed_value_is_the_one_everybody_gets() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    leader.land("first")
    leader.land("second")
    leader.finish()  # lands None too: ignored, the value was given
    assert await leader.outcome() == "first"


async def test_only_the_leader_lands_and_finishes() -> None:
    flights: SingleFlight[str] = SingleFlight()
    leader = flights.join(KEY)
    follower = flights.join(KEY)
    waiting = follow(flights.join(KEY))
    await settled(waiting)
    follower.land("not mine to give")
    follower.finish()
    await settled(waiting)
    assert len(flights) == 1 and not flights.join(KEY).leads  # the flight is still the leader's
    leader.land("answer")
    assert await waiting == "answer"


async def test_forget_makes_later_joiners_lead_while_existing_followers_still_get_the_value() -> None:
    flights: SingleFlight[str] = SingleFlight()
    old_leader = flights.join(KEY)
    old_follower = follow(flights.join(KEY))
    await settled(old_follower)
    flights.forget()  # a purge, a reload: what is in the air may be stale for anyone asking from now on
    assert len(flights) == 0
    new_leader = flights.join(KEY)
    assert new_leader.leads
    new_follower = follow(flights.join(KEY))
    await settled(old_follower, new_follower)
    old_leader.land("old")
    old_leader.finish()
    assert await old_follower == "old"
    assert len(flights) == 1  # the old leader's finish leaves the new flight alone
    await settled(new_follower)
    new_leader.land("new")
    assert await new_follower == "new"
    new_leader.finish()
    assert len(flights) == 0

"""A reload parses the policy off the event loop: traffic never waits on it; an over-limit file is refused at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from proxy.policy import load_policy
from proxy.policy.source import MAX_POLICY_BYTES
from proxy.server import Sidecar
from tests.support.sidecar import RunningSidecar, policy_text
from tests.support.upstream import FaultyUpstream, echo


def large_policy(url: str) -> str:
    """Valid, just under the size bound: one upstream with as many routes as fit (seconds of YAML parsing)."""
    head = policy_text(f"upstreams:\n  gemini:\n    url: {url}\n    retry: {{attempts: 1}}\n    routes:\n")
    route = "      - {name: r%06d, match: GET /r%06d/*}\n"
    count = (MAX_POLICY_BYTES - len(head)) // len(route % (0, 0))
    return head + "".join(route % (i, i) for i in range(count))


async def test_a_request_during_a_reload_of_a_large_policy_is_answered_promptly(
    tmp_path: Path, upstream: FaultyUpstream, client
) -> None:
    upstream.default = echo()
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(f"upstreams:\n  gemini: {{url: '{upstream.url}', retry: {{attempts: 1}}}}\n"))
    running = RunningSidecar(Sidecar(load_policy(path, {}), loader=lambda: load_policy(path, {})))
    await running.sidecar.start()
    try:
        text = large_policy(upstream.url)
        assert len(text.encode()) <= MAX_POLICY_BYTES
        path.write_text(text)
        reload = asyncio.create_task(running.sidecar.reload())
        await asyncio.sleep(0.05)  # the reload is under way
        started = time.perf_counter()
        async with client.get(running.url + "/gemini/x") as resp:
            assert resp.status == 200
        waited = time.perf_counter() - started
        # Timing-free core: the request was answered while the reload was still parsing (on the loop, the parse
        # would have run to the end first). The bound is generous, for a loaded machine.
        assert not reload.done()
        assert waited < 1.0, waited
        result = await reload
        assert result.applied, result.problems
        assert len(running.runtime.policy.upstreams["gemini"].routes) > 10_000
    finally:
        await running.sidecar.stop()


async def test_a_reload_of_an_over_limit_file_is_refused_at_once_with_a_clear_message(
    tmp_path: Path, upstream: FaultyUpstream, client
) -> None:
    upstream.default = echo()
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(f"upstreams:\n  gemini: {{url: '{upstream.url}'}}\n"))
    running = RunningSidecar(Sidecar(load_policy(path, {}), loader=lambda: load_policy(path, {})))
    await running.sidecar.start()
    try:
        with path.open("a") as handle:
            handle.write("# " + "x" * (64 * MAX_POLICY_BYTES) + "\n")  # 64 MiB
        started = time.perf_counter()
        async with client.post(running.admin + "/reload") as resp:
            assert resp.status == 400
            body = await resp.json()
        assert time.perf_counter() - started < 1.0
        assert body["problems"] == [
            f"{path}: the policy file is larger than 1024 KiB ({path.stat().st_size} bytes): a policy is a few KB; "
            "is this the right file?"
        ]
        async with client.get(running.url + "/gemini/x") as resp:
            assert resp.status == 200  # the running policy stays
    finally:
        await running.sidecar.stop()

"""Start a real sidecar (data plane + admin on ephemeral loopback ports) from policy YAML text."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.policy import CACHE_KEY_SECRET_ENV, parse_policy
from proxy.runtime import Runtime
from proxy.server import Sidecar


@dataclass
class RunningSidecar:
    sidecar: Sidecar

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.data_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.admin_port}"

    @property
    def runtime(self) -> Runtime:
        assert self.sidecar.runtime is not None
        return self.sidecar.runtime

    def settle(self) -> None:
        """Account the requests answered so far (the access log and metrics are written in batches)."""
        assert self.sidecar.pipeline is not None
        self.sidecar.pipeline.ledger.settle()


def policy_text(body: str) -> str:
    """Ephemeral ports unless the test says otherwise."""
    text = textwrap.dedent(body)
    if "listen:" not in text.split("upstreams:")[0]:
        text = "listen: 127.0.0.1:0\n" + text
    if "shutdown_grace:" not in text:
        text = "shutdown_grace: 1s\n" + text
    if "admin:" not in text.split("upstreams:")[0]:
        text = "admin: 127.0.0.1:0\n" + text
    return text


async def start_sidecar(body: str, environ: Mapping[str, str] | None = None) -> RunningSidecar:
    # A Redis cache needs a key secret (the loader refuses one without): the tests' unless they bring theirs.
    policy = parse_policy(policy_text(body), "test-policy.yaml", {CACHE_KEY_SECRET_ENV: "test-key-secret"}
                          if environ is None else environ)
    sidecar = Sidecar(policy)
    await sidecar.start()
    return RunningSidecar(sidecar)

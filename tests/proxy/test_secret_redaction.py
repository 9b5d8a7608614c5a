"""Black box: secret query values sent through a real sidecar reach the upstream, and nothing else: no log line
(access, cache, retry warnings), no admin endpoint (`/metrics`, `/policy`, `/upstreams`)."""

from __future__ import annotations

import json
import logging

from yarl import URL

from proxy.logs import JsonFormatter, TextFormatter
from tests.support.upstream import echo, free_port

# Each value is unique and marked (`SeCrEt`), so finding it anywhere means that secret leaked.
SECRETS = {
    name: f"SeCrEt{i:02d}x"
    for i, name in enumerate((
        "refresh_token", "client_secret", "id_token", "jwt", "sig", "signature", "code", "X-Amz-Signature",
        "X-Amz-Credential", "X-Goog-Signature", "password", "passwd", "secret", "token", "access_token", "api_key",
        "apikey", "key", "auth", "session", "Tenant_Secret",
    ))
}


def secret_query() -> str:
    """Every secret, spelled as callers do: `;` and `&`, encoded names, other cases, bracketed names."""
    spelled = []
    for i, (name, value) in enumerate(SECRETS.items()):
        if i % 4 == 1:
            name = name.upper()
        elif i % 4 == 2:
            name = "".join(f"%{ord(c):02X}" for c in name)
        elif i % 4 == 3:
            name = f"user[{name}]"
        spelled.append(f"{name}={value}")
    return "alt=sse&" + "".join(pair + (";" if i % 3 == 0 else "&") for i, pair in enumerate(spelled)) + "page=2"


def policy(upstream_url: str) -> str:
    return f"""
    redact:
      query: [tenant_secret]
    upstreams:
      g:
        url: {upstream_url}
        routes:
          - name: items
            match: GET /items/**
            cache: {{ttl: 60s}}
      down:
        url: http://127.0.0.1:{free_port()}
        retry: {{attempts: 2, backoff: {{base: 1ms, max: 1ms}}}}
    """


async def test_secret_query_values_reach_no_log_line_and_no_admin_endpoint(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level: the cache's HIT/MISS lines are debug
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream.url))
    query = secret_query()
    for _ in range(2):  # a MISS that is stored (`Cache SET`), then a HIT
        async with client.get(URL(f"{sc.url}/g/items/1?{query}", encoded=True)) as resp:
            assert resp.status == 200
            seen = json.loads(await resp.read())
    assert seen["path"] == f"/items/1?{query}"  # the upstream got every secret: they were really in play
    async with client.get(URL(f"{sc.url}/down/x?{query}", encoded=True)) as resp:
        assert resp.status == 502  # retried, then refused: the warning paths log too
    sc.settle()

    # `aiohttp.access` lines are the test upstream's own (the sidecar's servers run with access_log=None).
    records = [record for record in caplog.records if record.name != "aiohttp.access"]
    lines = [formatter.format(record) for record in records for formatter in (TextFormatter(), JsonFormatter())]
    logged = "\n".join(lines)
    assert "Cache SET" in logged and "Cache HIT" in logged and "Retrying down" in logged
    assert sum(record.name == "egress.access" for record in records) == 3
    assert "page=2" in logged and "alt=sse" in logged  # the rest of the query is still there to read

    answers = {}
    for endpoint in ("/metrics", "/policy", "/upstreams", "/breakers"):
        async with client.get(sc.admin + endpoint) as resp:
            answers[endpoint] = await resp.text()
    for name, value in SECRETS.items():
        assert value not in logged, f"{name}'s value is in a log line"
        for endpoint, text in answers.items():
            assert value not in text, f"{name}'s value is in {endpoint}"

"""The command line (`check`, running the sidecar, SIGTERM) and the logs (JSON access lines, no credentials).

The subprocess tests run the real `python -m proxy` on loopback ports picked free, against upstreams
this test process serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxy.logs import AccessEntry, JsonFormatter, TextFormatter, configure, log_accesses, redact_target
from proxy.policy import PolicyError, load_policy
from tests.support.upstream import FaultyUpstream, delay, echo, free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = "config/policy.yaml"
POLICY_ENV_PREFIXES = ("EGRESS_", "GEMINI_", "WHATSAPP_", "SUPABASE_", "REDIS_URL")
SECRETS = ("topsecret", "topsecret2", "injectedsecret", "tok3", "tok4")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything the shipped policy reads, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(POLICY_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", *args],
        cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=30,
    )


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


# -- check -----------------------------------------------------------------------------------------------


def test_check_show_prints_the_shipped_policy_without_secrets():
    env = clean_env(
        EGRESS_LISTEN=f"127.0.0.1:{free_port()}",
        EGRESS_ADMIN=f"127.0.0.1:{free_port()}",
        GEMINI_API_KEY="supersecret",
        EGRESS_ADMIN_TOKEN="adminsupersecret",
    )
    done = check(SHIPPED, "--show", env=env)
    assert done.returncode == 0, done.stderr
    policy = json.loads(done.stdout)
    assert policy["source"] == SHIPPED
    assert policy["listen"] == env["EGRESS_LISTEN"]
    assert policy["upstreams"]["gemini"]["headers"] == {"x-goog-api-key": "<redacted>"}
    assert policy["admin"]["token"] == "<redacted>"
    assert policy["upstreams"]["gemini"]["routes"][0]["timeouts"]["read"] == "15s"
    assert "supersecret" not in done.stdout + done.stderr
    assert done.stderr.strip() == f"{SHIPPED}: ok"


BROKEN = """\
listen: 127.0.0.1:7001
upstreams:
  gemini:
    url: ftp://g.example
    timeouts: {read: fast}
    routes:
      - {name: r, match: FETCH /x}
"""


def test_check_a_broken_file_prints_every_error_with_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    done = check(str(path), "--no-bind")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}:4: upstreams.gemini.url: expected an http(s) URL like 'https://api.example.com', got 'ftp://g.example'",
        f"{path}:5: upstreams.gemini.timeouts.read: expected a duration like '15s' or '150ms', got 'fast'",
        f"{path}:7: upstreams.gemini.routes[0].match: expected an HTTP method or ANY, got 'FETCH'",
        f"{path}: 3 error(s)",
    ]


def test_check_prints_a_short_summary_and_ok():
    env = clean_env(GEMINI_API_KEY="supersecret", EGRESS_ADMIN_TOKEN="adminsupersecret")
    done = check(SHIPPED, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"{SHIPPED}: ok"
    lines = done.stdout.splitlines()
    assert len(lines) < 50  # the effective policy is hundreds (`--show`)
    assert lines[0].startswith(f"{SHIPPED}: 4 upstream(s), ")
    text = done.stdout
    for expected in ("  gemini: ", "    breakers  gemini opens after 5 failures for 10s",
                     "    hedged    generate after 5s (up to 1)", "auth_user for 60s", "100 in flight, 50 queued",
                     "3 attempts on [connect_error, reset, timeout, 502, 503, 504]",
                     "    paced     number 80/s burst 80, pair 1/6s burst 3 (memory, wait 5s): send_message"):
        assert expected in text, expected
    assert "supersecret" not in text and "(token set)" in text


# Errors the loader finds section by section (upstreams before `cache` and `shutdown_grace`): printed by line.
OUT_OF_ORDER = """\
shutdown_grace: fast
upstreams:
  g:
    url: ftp://g.example
    timeouts: {read: soon}
cache: {max_entries: -1}
"""


def test_check_prints_errors_in_line_order(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(OUT_OF_ORDER)
    done = check(str(path))
    assert done.returncode == 1
    lines = [line.split(": ")[0] for line in done.stderr.splitlines()]
    assert lines == [f"{path}:1", f"{path}:4", f"{path}:5", f"{path}:6", str(path)]
    with pytest.raises(PolicyError) as raised:  # the loader's own order, which check used to print as is
        load_policy(path)
    assert [p.line for p in raised.value.problems] != [1, 4, 5, 6]


def test_check_a_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    done = check(str(missing))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == f"{missing}: cannot read the policy file: No such file or directory"


def test_check_does_not_bind_so_it_passes_next_to_the_running_sidecar(tmp_path):
    with busy_port() as listen, busy_port() as admin:  # a sidecar of this policy, say, is serving on them
        path = tmp_path / "policy.yaml"
        path.write_text(f"listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nupstreams: {{}}\n")
        done = check(str(path))
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == f"{path}: ok"
        assert check(str(path), "--no-bind").returncode == 0  # the old opt-out is still accepted


def test_check_bind_reports_ports_in_use_with_their_lines(tmp_path):
    with busy_port() as listen, busy_port() as admin:
        path = tmp_path / "policy.yaml"
        path.write_text(f"# ports\nlisten: 127.0.0.1:{listen}\nadmin:\n  listen: 127.0.0.1:{admin}\nupstreams: {{}}\n")
        done = check(str(path), "--bind", "--show")
        assert done.returncode == 1
        assert json.loads(done.stdout)["listen"] == f"127.0.0.1:{listen}"  # the policy itself is fine
        assert done.stderr.splitlines() == [
            f"{path}:2: listen: cannot listen on 127.0.0.1:{listen}: Address already in use",
            f"{path}:4: admin: cannot listen on 127.0.0.1:{admin}: Address already in use",
        ]


# -- running the sidecar ---------------------------------------------------------------------------------


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    stderr: asyncio.Task[bytes]
    data: str
    admin: str

    async def finish(self) -> tuple[int, str]:
        """Wait (10 s at most) for the exit; its code and everything it wrote on stderr."""
        async with asyncio.timeout(10):
            code = await self.proc.wait()
            return code, (await self.stderr).decode()


async def start_process(policy: str, *args: str, env: dict[str, str] | None = None) -> Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--policy", policy, *args,
        cwd=ROOT, env=env or clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    return Process(proc, asyncio.create_task(proc.stderr.read()), "", "")


@pytest.fixture
async def sidecar_process(tmp_path) -> AsyncIterator:
    """Start `python -m proxy` on a policy (free ports filled in) and wait until `/ready` says 200."""
    started: list[Process] = []

    async def start(body: str, *args: str, env: dict[str, str] | None = None) -> Process:
        data, admin = free_port(), free_port()
        path = tmp_path / "policy.yaml"
        path.write_text(f"listen: 127.0.0.1:{data}\nadmin: 127.0.0.1:{admin}\nshutdown_grace: 5s\n{body}")
        process = await start_process(str(path), *args, env=env)
        process.data, process.admin = f"http://127.0.0.1:{data}", f"http://127.0.0.1:{admin}"
        started.append(process)
        async with aiohttp.ClientSession() as session:
            for _ in range(500):
                if process.proc.returncode is not None:
                    raise AssertionError(f"the sidecar exited: {(await process.stderr).decode()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(process.admin + "/ready") as resp:
                        if resp.status == 200:
                            return process
                await asyncio.sleep(0.02)
        raise AssertionError("the sidecar never became ready")

    yield start
    for process in started:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()
        process.stderr.cancel()


def upstream_policy(upstream: FaultyUpstream) -> str:
    return f"""\
upstreams:
  gemini:
    url: {upstream.url}
    headers: {{x-goog-api-key: "${{GEMINI_API_KEY}}"}}
    routes:
      - name: generate
        match: POST /v1beta/models/*:generateContent
"""


async def ready_status(session: aiohttp.ClientSession, admin: str) -> int | None:
    """`/ready`'s status, or None when the admin port refuses."""
    try:
        async with session.get(admin + "/ready") as resp:
            return resp.status
    except aiohttp.ClientConnectionError:
        return None


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(upstream, sidecar_process):
    upstream.default = delay(1.0, echo())
    sc = await sidecar_process(upstream_policy(upstream), env=clean_env(GEMINI_API_KEY="k"))
    async with aiohttp.ClientSession() as session:

        async def call() -> tuple[int, dict]:
            async with session.post(sc.data + "/gemini/v1beta/models/m:generateContent", data=b"{}") as resp:
                return resp.status, await resp.json()

        in_flight = asyncio.create_task(call())
        for _ in range(250):  # until the upstream holds the request
            if upstream.requests:
                break
            await asyncio.sleep(0.01)
        assert upstream.requests, "the request never reached the upstream"
        sc.proc.send_signal(signal.SIGTERM)

        statuses = []
        async with aiohttp.ClientSession() as probe:  # fresh connections: not the keep-alive one
            while not in_flight.done():
                statuses.append(await ready_status(probe, sc.admin))
                if statuses[-1] != 200:
                    break
                await asyncio.sleep(0.01)
        assert statuses and statuses[-1] in (503, None), statuses
        assert not in_flight.done(), "/ready still said 200 after the request finished"

        status, body = await in_flight
        assert status == 200
        assert body["path"] == "/v1beta/models/m:generateContent"
    code, stderr = await sc.finish()
    assert code == 0, stderr
    assert "stopping" in stderr and "stopped" in stderr


async def test_sigint_stops_an_idle_sidecar_with_0(upstream, sidecar_process):
    sc = await sidecar_process(upstream_policy(upstream), env=clean_env(GEMINI_API_KEY=""))
    sc.proc.send_signal(signal.SIGINT)
    code, stderr = await sc.finish()
    assert code == 0, stderr


async def test_run_refuses_a_broken_policy_with_every_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code, stderr = await (await start_process(str(path))).finish()
    assert code == 1
    assert [line.split(": ")[0] for line in stderr.splitlines()] == [f"{path}:4", f"{path}:5", f"{path}:7"]


async def test_run_reports_a_port_in_use_with_its_line(tmp_path):
    with busy_port() as port:
        path = tmp_path / "policy.yaml"
        path.write_text(f"admin: 127.0.0.1:{free_port()}\nlisten: 127.0.0.1:{port}\n")
        code, stderr = await (await start_process(str(path))).finish()
    assert code == 1
    assert f"{path}:2: listen: cannot listen on 127.0.0.1:{port}: address already in use" in stderr


async def test_policy_shows_the_last_reload_attempt_of_a_running_sidecar(upstream, sidecar_process, tmp_path):
    sc = await sidecar_process(upstream_policy(upstream), env=clean_env(GEMINI_API_KEY="k"))
    path = tmp_path / "policy.yaml"
    good = path.read_text()
    async with aiohttp.ClientSession() as session:
        async with session.get(sc.admin + "/policy") as resp:
            before = await resp.json()
        assert before["reload"]["last_attempt"] is None
        assert before["reload"]["policy_loaded_at"].endswith("Z")

        route = "      - name: generate\n"
        path.write_text(good.replace(route, route + "        retry: {attempts: x}\n"))
        async with session.post(sc.admin + "/reload") as resp:
            assert resp.status == 400
        async with session.get(sc.admin + "/policy") as resp:
            refused = await resp.json()
        attempt = refused["reload"]["last_attempt"]
        assert attempt["result"] == "refused"
        assert attempt["problems"] == [
            f"{path}:10: upstreams.gemini.routes[0].retry.attempts: expected a whole number, got 'x'"]
        assert attempt["at"] >= before["reload"]["policy_loaded_at"]
        assert refused["reload"]["policy_loaded_at"] == before["reload"]["policy_loaded_at"]  # the old one runs
        assert refused["upstreams"]["gemini"]["routes"][0]["retry"]["attempts"] == 3

        path.write_text(good.replace("shutdown_grace: 5s", "shutdown_grace: 4s"))
        sc.proc.send_signal(signal.SIGHUP)  # the other way to reload: recorded the same
        for _ in range(250):
            async with session.get(sc.admin + "/policy") as resp:
                applied = await resp.json()
            if applied["reload"]["last_attempt"]["result"] == "applied":
                break
            await asyncio.sleep(0.02)
        assert applied["reload"]["last_attempt"] == {
            "at": applied["reload"]["policy_loaded_at"], "result": "applied", "problems": [], "notes": []}
        assert applied["shutdown_grace"] == "4s"


# -- logs ------------------------------------------------------------------------------------------------


async def test_json_access_log_and_no_credentials_in_any_log(upstream, sidecar_process):
    upstream.default = echo()
    body = upstream_policy(upstream) + f"""\
    retry: {{attempts: 2, backoff: {{base: 10ms, max: 10ms}}}}
  down:
    url: http://127.0.0.1:{free_port()}
    headers: {{apikey: "${{GEMINI_API_KEY}}"}}
    retry: {{attempts: 2, backoff: {{base: 10ms, max: 10ms}}}}
"""
    sc = await sidecar_process(
        body, "--log-format", "json", "--log-level", "debug", env=clean_env(GEMINI_API_KEY="injectedsecret")
    )
    headers = {"Authorization": "Bearer topsecret", "apikey": "topsecret2", "X-Request-Id": "req-42"}
    target = "/v1beta/models/m:generateContent?access_token=tok3&alt=sse&key=tok4"
    async with aiohttp.ClientSession() as session:
        url = URL(sc.data + "/gemini" + target, encoded=True)
        async with session.post(url, data=b'{"contents": []}', headers=headers) as resp:
            assert resp.status == 200
            raw = await resp.read()
        seen = json.loads(raw)
        # the secrets were really in play: the upstream got them
        assert seen["headers"]["x-goog-api-key"] == ["injectedsecret"]
        assert seen["headers"]["authorization"] == ["Bearer topsecret"]
        assert seen["path"] == target
        # a failing upstream, retried: the error paths log too
        async with session.get(URL(sc.data + "/down/x?token=tok3&key=tok4", encoded=True), headers=headers) as resp:
            assert resp.status == 502
    sc.proc.send_signal(signal.SIGTERM)
    code, stderr = await sc.finish()
    assert code == 0, stderr

    for secret in SECRETS:
        assert secret not in stderr, secret
    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    access = [e for e in entries if e["logger"] == "egress.access"]
    assert len(access) == 2, access
    ok, failed = access
    assert {k: ok[k] for k in ("request_id", "upstream", "route", "method", "path", "status")} == {
        "request_id": "req-42",
        "upstream": "gemini",
        "route": "generate",
        "method": "POST",
        "path": "/gemini/v1beta/models/m:generateContent?access_token=<redacted>&alt=sse&key=<redacted>",
        "status": 200,
    }
    assert ok["bytes"] == len(raw)
    assert isinstance(ok["duration_ms"], (int, float)) and ok["duration_ms"] >= 0
    assert ok["level"] == "info" and ok["ts"].endswith("Z")
    assert "<redacted>" in ok["msg"]
    assert (failed["upstream"], failed["route"], failed["status"]) == ("down", "default", 502)
    assert failed["path"] == "/down/x?token=<redacted>&key=<redacted>"
    assert failed["egress_error"] == "upstream_connect_error" and failed["attempts"] == 2
    assert any(e["logger"] == "egress.retry" for e in entries)


async def test_the_access_log_path_is_redacted_in_process(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.INFO, logger="egress.access")
    upstream.default = echo()
    sc = await make_sidecar(f"upstreams:\n  g:\n    url: {upstream.url}\n")
    url = URL(sc.url + "/g/a?Access_Token=tok3&b=1&KEY=tok4&api_key=tok5&flag", encoded=True)
    async with client.get(url, headers={"Authorization": "Bearer topsecret"}) as resp:
        assert resp.status == 200
    sc.settle()
    [record] = [r for r in caplog.records if r.name == "egress.access"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["path"] == "/g/a?Access_Token=<redacted>&b=1&KEY=<redacted>&api_key=<redacted>&flag"
    assert (fields["upstream"], fields["route"], fields["status"]) == ("g", "default", 200)
    text = TextFormatter().format(record) + JsonFormatter().format(record)
    for secret in ("tok3", "tok4", "tok5", "topsecret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("path", "query", "logged"),
    [
        ("/g/a", "", "/g/a"),
        ("/g/a", "alt=sse", "/g/a?alt=sse"),
        ("/g/a", "key=abc&alt=sse", "/g/a?key=<redacted>&alt=sse"),
        ("/g/a", "access_token=x&token=y&password=z&secret=s&apikey=k", "/g/a?access_token=<redacted>&token=<redacted>"
         "&password=<redacted>&secret=<redacted>&apikey=<redacted>"),
        ("/g/a", "%6Bey=abc", "/g/a?%6Bey=<redacted>"),
        ("/g/a", "monkey=1&keys=2", "/g/a?monkey=1&keys=2"),
    ],
)
def test_redact_target(path, query, logged):
    assert redact_target(path, query) == logged


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    aiohttp_access = logging.getLogger("aiohttp.access")
    disabled = aiohttp_access.disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    aiohttp_access.disabled = disabled


def test_configure_json_writes_one_json_object_per_line(restore_logging, capsys):
    configure("info", "json")
    log_accesses([(time.time(), AccessEntry("r1", "g", "default", "GET", "/g/x", 200, 1.5, bytes=12))])
    logging.getLogger("egress.test").debug("hidden at info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("egress.test").exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    access, failure = (json.loads(line) for line in lines)
    assert access["msg"] == (
        "request_id=r1 upstream=g route=default method=GET path=/g/x status=200 duration_ms=1.50 bytes=12 attempts=0"
    )
    assert (access["request_id"], access["status"], access["egress_error"], access["cache"]) == ("r1", 200, None, None)
    assert access["logger"] == "egress.access" and access["level"] == "info"
    assert failure["level"] == "error" and "ValueError: boom" in failure["exc"]
    assert logging.getLogger("aiohttp.access").disabled


def test_configure_text_access_lines_look_like_every_other_line(restore_logging, capsys):
    # Access lines skip the LogRecord (a fast path); they must read exactly like lines that don't.
    configure("info", "text")
    log_accesses([(time.time(), AccessEntry("r1", "", "", "GET", "/x", 404, 0.25, egress_error="no_route"))])
    logging.getLogger("egress.test").info("hello")
    access, other = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    fields = r"request_id=r1 method=GET path=/x status=404 duration_ms=0\.25 bytes=0 attempts=0 egress_error=no_route"
    assert re.fullmatch(stamp + r" INFO egress\.access " + fields, access), access
    assert re.fullmatch(stamp + r" INFO egress\.test hello", other), other


def test_configure_text_and_level(restore_logging, capsys):
    configure("warning", "text")
    entry = AccessEntry("r1", "g", "default", "GET", "/g/x", 200, 1.0)
    log_accesses([(time.time(), entry)])  # below the level: not even formatted
    logging.getLogger("egress.test").warning("careful")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING egress.test careful")


def test_an_access_log_whose_stream_is_gone_drops_lines_not_requests():
    import io

    from proxy.logs import AccessLogHandler

    stream = io.StringIO()
    handler = AccessLogHandler(stream)
    stream.close()  # as a closed stderr, or a full disk, would
    handler.write_lines(["request_id=r1 status=200"])  # fails quietly
    handler.flush()

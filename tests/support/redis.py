"""A real Redis for the cache tests, and Redis servers a test may start and kill itself.

`redis_url`: the machine's Redis on 127.0.0.1:6379 if it answers PING; else a `redis-server` started here
(no persistence) if the binary exists; else the Redis tests are skipped, loudly. With `REQUIRE_REDIS=1`
(CI) they fail instead: a green run must never mean "the Redis half was silently skipped".

`redis_namespace`: a fresh cache namespace per test; every key under it is deleted afterwards.
`make_redis`: start a private `redis-server` on a free port, to stop and restart mid-test. The machine's
Redis is never stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest
import redis

from tests.support.upstream import free_port

HOST = "127.0.0.1"
MACHINE_PORT = 6379


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"REQUIRE_REDIS=1 but {reason}", pytrace=False)
    pytest.skip(f"REDIS TESTS SKIPPED: {reason} (set REQUIRE_REDIS=1 to make this a failure)")


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A `redis-server` of the test's own, without persistence, on a fixed port so it can come back there."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, wait: float = 5.0) -> RedisProcess:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + wait
        while not answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                pytest.fail(f"redis-server did not come up on port {self.port}", pytrace=False)
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("there is no redis-server binary to start")
    return binary


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if answers_ping(MACHINE_PORT):
        yield f"redis://{HOST}:{MACHINE_PORT}/0"
        return
    if shutil.which("redis-server") is None:
        unavailable(f"nothing answers PING on {HOST}:{MACHINE_PORT} and there is no redis-server binary to start")
    own = RedisProcess(redis_binary(), free_port()).start()
    try:
        yield own.url
    finally:
        own.stop()


def delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    namespace = f"egress-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    delete_namespace(redis_url, namespace)


@pytest.fixture
def make_redis() -> Iterator[Callable[[], RedisProcess]]:
    started: list[RedisProcess] = []

    def make() -> RedisProcess:
        process = RedisProcess(redis_binary(), free_port()).start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()

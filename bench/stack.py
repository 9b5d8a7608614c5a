"""The processes under test, on loopback ports: the upstream(s), the bare pass-through and the sidecar(s).

Upstream: nginx serving static files when it is installed, else the aiohttp upstream (`bench/upstream.py`),
which also always serves the 20 ms endpoint and the upload sink. The sidecar's cache is in memory; with a
`RedisCache`, a second sidecar with the same policy keeps its cache in Redis instead (the backend is a
top-level setting of the policy, one per process).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.processes import LOOPBACK, Processes, free_port, free_ports, wait_http
from proxy.policy import CACHE_KEY_SECRET_ENV

SMALL = "small.json"
LARGE = "1mb.bin"
HUGE = "100mb.bin"
HUGE_BYTES = 100 * 1024 * 1024

# Upstream names in the sidecar's policy (and the pass-through's map).
STATIC = "static"  # shipped-style policy in front of the static upstream
AIO = "aio"  # the same policy in front of the aiohttp upstream (20 ms endpoint, sink)
LEAN = "lean"  # static upstream, retries off (attempts: 1) and a breaker that never trips
TRIPPED = "tripped"  # static upstream; the benchmark opens its breaker through the admin port
CACHED = "cached"  # static upstream whose route of the same name caches GET /small.json for 5 minutes
CACHED_ROUTE = "cached"


@dataclass(frozen=True, slots=True)
class RedisCache:
    """The cache backend of the Redis sidecar: every key it writes is `<namespace>:...`."""

    url: str
    namespace: str
    version: str = ""  # the server's, for the results file


@dataclass(frozen=True, slots=True)
class Sidecar:
    url: str
    admin: str
    pid: int


@dataclass(frozen=True, slots=True)
class Stack:
    upstream_kind: str  # "nginx" or "aiohttp"
    static: str  # base URL of the static-file upstream
    aio: str  # base URL of the aiohttp upstream
    passthrough: str
    passthrough_pid: int
    conforming: str  # the pass-through with the per-request duties of the issue (bench/passthrough.py)
    conforming_pid: int
    sidecar: Sidecar
    redis_sidecar: Sidecar | None = None  # same policy, cache in Redis (only when the cache scenario runs)

    def direct(self, upstream: str, path: str) -> str:
        return f"{self.aio if upstream == AIO else self.static}/{path}"

    def via_passthrough(self, upstream: str, path: str, conforming: bool = False) -> str:
        return f"{self.conforming if conforming else self.passthrough}/{upstream}/{path}"

    def via_sidecar(self, upstream: str, path: str, sidecar: Sidecar | None = None) -> str:
        return f"{(sidecar or self.sidecar).url}/{upstream}/{path}"


def write_files(root: Path, huge: bool = True) -> None:
    """The upstream's files; `huge=False` leaves out the 100 MB one (only the streaming check reads it)."""
    root.mkdir(parents=True, exist_ok=True)
    small = {"id": "wamid.HBgMMzQ2MDAwMDAwMDAwFQIAEhgUM0VCMEI2", "status": "delivered", "recipient": "34600000000",
             "timestamp": 1732540800, "conversation": {"id": "c0ffee", "origin": {"type": "service"}},
             "pricing": {"billable": False, "category": "service"}}
    (root / SMALL).write_text(json.dumps(small))
    block = os.urandom(1024 * 1024)
    (root / LARGE).write_bytes(block)
    if not huge:
        return
    with open(root / HUGE, "wb") as out:
        for _ in range(HUGE_BYTES // len(block)):
            out.write(block)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def nginx_preamble(tmp: Path, temp: Path, connections: int) -> str:
    """The start of a throwaway nginx.conf, up to inside its `http` block: one worker, the pid and error log in
    `tmp`, every temp path under `temp` (nothing outside the run's own directory)."""
    return f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
"""


def nginx_conf(tmp: Path, root: Path, port: int) -> str:
    return f"""
daemon off;
master_process off;
{nginx_preamble(tmp, tmp / "nginx-temp", 4096)}    types {{ application/json json; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    server {{
        listen {LOOPBACK}:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def start_nginx(procs: Processes, tmp: Path, root: Path, core: int | None) -> str | None:
    nginx = nginx_binary()
    if nginx is None:
        return None
    port = free_port()
    (tmp / "nginx-temp").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, root, port))
    proc = procs.start("nginx", [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")], core)
    base = f"http://{LOOPBACK}:{port}"
    wait_http(f"{base}/{SMALL}", proc, "nginx", procs)
    return base


def start_aio_upstream(procs: Processes, root: Path, core: int | None) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--root", str(root)]
    proc = procs.start("upstream", argv, core)
    base = f"http://{LOOPBACK}:{port}"
    wait_http(f"{base}/{SMALL}", proc, "upstream", procs)
    return base


def start_passthrough(
    procs: Processes, upstreams: dict[str, str], core: int | None, conforming: bool = False
) -> tuple[str, int]:
    port = free_port()
    name = "passthrough-conforming" if conforming else "passthrough"
    argv = [sys.executable, "-m", "bench.passthrough", "--port", str(port), *(["--conforming"] if conforming else []),
            *(f"{k}={v}" for k, v in upstreams.items())]
    proc = procs.start(name, argv, core)
    base = f"http://{LOOPBACK}:{port}"
    wait_http(f"{base}/{STATIC}/{SMALL}", proc, name, procs)
    return base, proc.pid


SHIPPED_ROUTES = """
      - {name: send, match: POST /v1/*/messages}
      - {name: item, match: GET /v1/*}
      - {name: files, match: ANY /**}"""
CACHED_ROUTES = f"""
      - {{name: {CACHED_ROUTE}, match: GET /{SMALL}, cache: {{ttl: 5m}}}}
      - {{name: files, match: ANY /**}}"""


def cache_settings(redis: RedisCache | None) -> str:
    if redis is None:
        return "{backend: memory, max_body: 1MiB}"
    return f'{{backend: redis, redis_url: "{redis.url}", namespace: "{redis.namespace}", max_body: 1MiB, ' \
           f"op_timeout: 50ms}}"


def sidecar_policy(port: int, admin: int, static: str, aio: str, redis: RedisCache | None = None) -> str:
    """config/policy.yaml's defaults (timeouts, retry, budget, breaker), bulkheads sized for 32+ connections,
    and routes in front of the catch-all like a shipped upstream has; the cache in memory, or in `redis`."""

    def upstream(name: str, url: str, extra: str = "", routes: str = SHIPPED_ROUTES) -> str:
        return f"""
  {name}:
    url: {url}
    timeouts: {{read: 10s}}{extra}
    routes:{routes}"""

    lean = "\n    retry: {attempts: 1}\n    breaker: {failures: 1000000000}"
    return f"""# generated by bench/overhead.py
listen: {LOOPBACK}:{port}
admin: {{listen: "{LOOPBACK}:{admin}"}}
shutdown_grace: 1s
cache: {cache_settings(redis)}
defaults:
  timeouts: {{connect: 3s, read: 10s, write: 5s, pool: 5s, total: 30s}}
  retry:
    attempts: 3
    backoff: {{base: 100ms, max: 2s}}
    on: [connect_error, reset, timeout, 502, 503, 504]
    budget: {{ratio: 0.2, min_per_second: 5}}
    max_body: 1MiB
  breaker: {{failures: 5, reset_after: 30s, count: [connect_error, timeout, 5xx]}}
  limits: {{max_concurrent: 256, max_queue: 256}}
upstreams:{upstream(STATIC, static)}{upstream(AIO, aio)}{upstream(LEAN, static, lean)}{upstream(TRIPPED, static)}\
{upstream(CACHED, static, routes=CACHED_ROUTES)}
"""


def start_sidecar(
    procs: Processes, tmp: Path, name: str, static: str, aio: str, core: int | None, redis: RedisCache | None = None
) -> Sidecar:
    port, admin = free_ports(2)
    policy = tmp / f"{name}-policy.yaml"
    policy.write_text(sidecar_policy(port, admin, static, aio, redis))
    if redis is not None:  # a Redis cache needs a key secret: this benchmark's own, for its own keys
        os.environ.setdefault(CACHE_KEY_SECRET_ENV, secrets.token_hex(16))
    return launch_sidecar(procs, name, policy, port, admin, core)


def launch_sidecar(procs: Processes, name: str, policy: Path, port: int, admin: int, core: int | None) -> Sidecar:
    """`python -m proxy --policy POLICY` (listening on `port`, admin on `admin`), once its admin says ready."""
    proc = procs.start(name, [sys.executable, "-m", "proxy", "--policy", str(policy)], core)
    sidecar = Sidecar(f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{admin}", proc.pid)
    wait_http(f"{sidecar.admin}/ready", proc, name, procs)
    return sidecar


def build_stack(
    procs: Processes, tmp: Path, core: int | None, upstream_core: int | None, use_nginx: bool = True,
    redis: RedisCache | None = None,
) -> Stack:
    root = tmp / "www"
    write_files(root)
    aio = start_aio_upstream(procs, root, upstream_core)
    nginx = start_nginx(procs, tmp, root, upstream_core) if use_nginx else None
    static = nginx or aio
    passthrough, passthrough_pid = start_passthrough(procs, {STATIC: static, AIO: aio}, core)
    conforming, conforming_pid = start_passthrough(procs, {STATIC: static, AIO: aio}, core, conforming=True)
    sidecar = start_sidecar(procs, tmp, "sidecar", static, aio, core)
    redis_sidecar = start_sidecar(procs, tmp, "sidecar-redis", static, aio, core, redis) if redis else None
    return Stack("nginx" if nginx else "aiohttp", static, aio, passthrough, passthrough_pid, conforming, conforming_pid,
                 sidecar, redis_sidecar)


def admin_post(sidecar: Sidecar, path: str) -> dict[str, object]:
    # No body: urllib labels even an empty one form-urlencoded, a type the admin port refuses (CSRF).
    request = urllib.request.Request(f"{sidecar.admin}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        result: dict[str, object] = json.load(response)
        return result

"""The sidecar process: data plane and admin server in one event loop, a policy reload without restart
(SIGHUP or admin `POST /reload`), and a graceful stop."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from proxy.admin import AdminState, ReloadResult, audit, build_admin_app
from proxy.listener import CallerServer
from proxy.pipeline import Pipeline
from proxy.policy import Address, Policy, PolicyError, Problem, load_policy
from proxy.runtime import LiveRuntime, Runtime

log = logging.getLogger("egress.server")

CANCEL_WAIT = 0.25  # seconds aiohttp gives a cancelled request to unwind, once the grace is over


def _bound_port(runner: web.BaseRunner) -> int:
    return int(runner.addresses[0][1])


class Sidecar:
    """Start, serve, stop. `data_port` / `admin_port` are the bound ports (useful with port 0)."""

    def __init__(self, policy: Policy, loader: Callable[[], Policy] | None = None) -> None:
        self.policy = policy
        self._loader = loader or (lambda: load_policy(self.policy.source))
        self.live: LiveRuntime | None = None
        self.pipeline: Pipeline | None = None
        self.admin_state: AdminState | None = None
        self._retiring: dict[asyncio.Task[None], tuple[Runtime, Runtime]] = {}  # (old, new) pairs
        self._reloading = asyncio.Lock()
        self._bound = policy  # the policy whose addresses are bound: those change on restart only
        self._callers: CallerServer | None = None
        self._data_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.data_port = 0
        self.admin_port = 0

    async def start(self) -> None:
        policy = self.policy
        if not policy.admin.listen.is_loopback and not policy.admin.token:
            # The loader refuses such a policy; this catches one built another way before anything is bound.
            raise PolicyError([Problem(policy.source, policy.admin.listen.line, "admin",
                                       f"{policy.admin.listen} is reachable beyond this host: set admin.token")])
        live = self.live = LiveRuntime(Runtime(policy))
        await live.runtime.cache.warm_up()  # a Redis that is down is not fatal: requests go on uncached
        await _warm_up_pacing(live.runtime)  # nor for pacing: each replica then paces at its share
        self.pipeline = Pipeline(live)
        self.admin_state = AdminState(live, reload=self.reload)
        self._admin_runner = web.AppRunner(build_admin_app(self.admin_state), access_log=None)
        await self._admin_runner.setup()
        await self._bind(self._admin_runner, policy.admin.listen, "admin")
        self.admin_port = _bound_port(self._admin_runner)
        server = self._callers = CallerServer(self.pipeline, policy.limits, self._refused_caller)
        # The grace is the sidecar's to keep (see stop): aiohttp only cancels what outlasted it.
        self._data_runner = web.ServerRunner(server, shutdown_timeout=CANCEL_WAIT)
        await self._data_runner.setup()
        await self._bind(self._data_runner, policy.listen, "listen")
        self.data_port = _bound_port(self._data_runner)
        self.admin_state.ready = True
        log.info(
            "egress sidecar listening on %s:%d (admin %s:%d), %d upstreams from %s",
            policy.listen.host, self.data_port, policy.admin.listen.host, self.admin_port,
            len(policy.upstreams), policy.source,
        )

    @property
    def runtime(self) -> Runtime | None:
        return self.live.runtime if self.live is not None else None

    def _refused_caller(self, reason: str) -> None:
        if self.live is not None:
            self.live.runtime.metrics.refused("", reason)

    async def _bind(self, runner: web.BaseRunner, address: Address, key: str) -> web.TCPSite:
        site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            problem = Problem(self.policy.source, address.line, key, f"cannot listen on {address}: {reason}")
            raise PolicyError([problem]) from None
        return site

    async def reload(self) -> ReloadResult:
        """Re-read the policy file. A bad file changes nothing: the running policy stays, every error is logged
        and returned. A good one takes effect for the next request; breakers, pools, throttle clocks and the
        cache carry over; what the new policy dropped is closed once in-flight requests had `shutdown_grace`."""
        async with self._reloading:  # one at a time: two would both succeed the same runtime, orphaning one
            result = await self._reload()
            if self.admin_state is not None:
                self.admin_state.note_reload(result)
            return result

    async def _reload(self) -> ReloadResult:
        if self.live is None:
            return ReloadResult(False, ["the sidecar is not running"], [])
        try:
            # Off the event loop: parsing a large policy (up to the loader's 1 MiB bound, a few seconds of pure-Python
            # YAML) on it froze every request in flight for as long. The thread only reads the file and builds frozen
            # objects; the runtime is swapped here, on the loop, as before.
            policy = await asyncio.to_thread(self._loader)
        except PolicyError as exc:
            log.error("policy reload refused, the running policy stays:\n%s", exc)
            self.live.runtime.metrics.reloads.labels("refused").inc()
            return ReloadResult(False, [str(p) for p in exc.problems], [])
        except Exception as exc:  # a loader bug must not take the running policy (or the admin port) with it
            log.exception("policy reload failed, the running policy stays")
            self.live.runtime.metrics.reloads.labels("refused").inc()
            return ReloadResult(False, [f"{self.policy.source}: {type(exc).__name__}: {exc}"], [])
        bound_admin = self._bound.admin.listen
        if not bound_admin.is_loopback and not policy.admin.token:
            # The loader checks the new policy's own address; the port stays bound where it is until a restart.
            problem = Problem(policy.source, policy.admin.listen.line, "admin",
                              f"the admin port stays bound to {bound_admin} (beyond this host) until a restart: "
                              "keep admin.token set")
            log.error("policy reload refused, the running policy stays:\n%s", problem)
            self.live.runtime.metrics.reloads.labels("refused").inc()
            return ReloadResult(False, [str(problem)], [])
        notes = _restart_only_changes(self._bound, policy)
        for note in notes:
            log.warning("policy reload: %s", note)
        new = self.live.runtime.successor(policy)
        if new.cache is not self.live.runtime.cache:
            await new.cache.warm_up()
        await _warm_up_pacing(new)
        old = self.live.swap(new)
        self.policy = policy
        if self._callers is not None:
            self._callers.limits = policy.limits  # connections accepted from now on
        task = asyncio.create_task(self._retire(old, new, policy.shutdown_grace))
        self._retiring[task] = (old, new)
        task.add_done_callback(self._retiring.pop)
        new.metrics.reloads.labels("applied").inc()
        log.info("policy reloaded from %s: %d upstreams", policy.source, len(policy.upstreams))
        return ReloadResult(True, [], notes)

    @staticmethod
    async def _retire(old: Runtime, new: Runtime, grace: float) -> None:
        await asyncio.sleep(grace)
        await old.retire(new)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within `shutdown_grace` (the running policy's, reloaded
        or not), cancel what is left, then close upstream pools, those of runtimes still to retire included."""
        if self.admin_state is not None:
            self.admin_state.ready = False
        if self._data_runner is not None:
            runner, self._data_runner = self._data_runner, None
            for site in list(runner.sites):
                await site.stop()  # no new connections
            if self._callers is not None:
                self._callers.stop_watching()
            if runner.server is not None:
                runner.server.pre_shutdown()  # no new requests on kept-alive ones
            if self.pipeline is not None and not await self.pipeline.drain(self.policy.shutdown_grace):
                log.warning("shutdown grace (%gs) is over: cancelling %d requests in flight",
                            self.policy.shutdown_grace, self.pipeline.active)
            await runner.cleanup()
        if self.pipeline is not None:
            self.pipeline.ledger.close()  # the last requests' lines and counts
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for _, (old, new) in retiring:
            await old.retire(new)
        if self.live is not None:
            await self.live.runtime.close()
            self.live = None


async def _warm_up_pacing(runtime: Runtime) -> None:
    """Each Redis-paced upstream's link dialled and its replicas counted before a request needs them (a no-op for a
    link already beating, as a carried one is)."""
    for state in runtime.upstreams.values():
        await state.pacer.warm_up()


def _restart_only_changes(bound: Policy, new: Policy) -> list[str]:
    """What `new` asks for that only a restart gives, compared with what is bound now (not the last reload's)."""
    notes = []
    if bound.listen != new.listen:
        notes.append(f"listen changed ({bound.listen} -> {new.listen}): takes effect on restart")
    if bound.admin.listen != new.admin.listen:
        notes.append(f"admin changed ({bound.admin.listen} -> {new.admin.listen}): takes effect on restart")
    return notes


def _audit_signal_reload(task: asyncio.Task[ReloadResult]) -> None:
    """The audit line of a SIGHUP reload, as the admin port writes one for `POST /reload`."""
    if task.cancelled() or task.exception() is not None:
        audit.warning("admin SIGHUP reload from the process's signal: failed")
        return
    result = task.result()
    outcome = "applied" if result.applied else f"refused ({len(result.problems)} problem(s))"
    audit.warning("admin SIGHUP reload from the process's signal: %s", outcome)


async def serve(policy: Policy) -> None:
    """Run until SIGTERM / SIGINT, then stop gracefully; SIGHUP reloads the policy."""
    sidecar = Sidecar(policy)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[ReloadResult]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(sidecar.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)
        task.add_done_callback(_audit_signal_reload)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
        log.info("stopping: no new connections, waiting up to %gs for in-flight requests",
                 sidecar.policy.shutdown_grace)
    finally:
        await sidecar.stop()
        log.info("stopped")

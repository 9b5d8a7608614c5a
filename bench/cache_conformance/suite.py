"""The public HTTP caching test suite (github.com/http-tests/cache-tests), run from a checkout of it with node.

Nothing of the suite is copied here: its origin server (`test-engine/server/server.mjs`), its command-line runner
(`test-engine/cli.mjs`) and its test list (`tests/index.mjs`) are run from the checkout. The suite reads its settings
from the environment npm would set from `package.json`'s `config` (`npm run server --port=...`,
`npm run cli --base=...`); the harness sets the same variables and runs node directly.

The runner asks for `<base>/config/<uuid>` (PUT: the test's script), `<base>/test/<uuid>[/file][?query]` and
`<base>/state/<uuid>` (what the origin saw). A base may carry a path, so the sidecar's
`http://127.0.0.1:PORT/cachetests` works: the sidecar strips `/cachetests` and the origin sees `/test/<uuid>`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERVER = Path("test-engine/server/server.mjs")
CLI = Path("test-engine/cli.mjs")
TESTS = Path("tests/index.mjs")
RUNNER_TIMEOUT = 900.0  # a whole run takes about a minute; its requests time out after 10 s each

# The suite's origin listens on every interface (`server.listen(port)`); this module, loaded first with
# `node --import`, makes a listen on a bare port bind loopback only.
LOOPBACK_SHIM = """\
import net from 'net'
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number' || (typeof port === 'string' && /^[0-9]+$/.test(port))) {
    return listen.call(this, Number(port), '127.0.0.1', ...rest)
  }
  return listen.call(this, port, ...rest)
}
"""

# The test list, flattened: what the summary needs of each test (its name is Markdown).
EXPORT = """\
import { pathToFileURL } from 'url'
const { default: suites } = await import(pathToFileURL(process.argv[1]).href)
const out = []
for (const suite of suites) {
  for (const test of suite.tests) {
    out.push({ id: test.id, name: test.name, kind: test.kind || 'required', depends_on: test.depends_on || [],
      suite_id: suite.id, suite_name: suite.name, browser_only: test.browser_only === true })
  }
}
console.log(JSON.stringify(out))
"""

GET_IT = ("git clone https://github.com/http-tests/cache-tests.git && cd cache-tests && npm install --omit=dev "
          "(node 20.18 or later)")


class SuiteError(RuntimeError):
    pass


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise SuiteError("node is not on PATH: the suite's origin and runner are node programs")
    return found


def check(suite: Path) -> None:
    """A checkout the harness can run, with its dependencies (undici: the runner's interim-response tests)."""
    missing = [str(p) for p in (SERVER, CLI, TESTS) if not (suite / p).is_file()]
    if missing:
        raise SuiteError(f"{suite} is not a checkout of the cache-tests suite (missing {', '.join(missing)}); "
                         f"get one: {GET_IT}")
    if not (suite / "node_modules" / "undici").is_dir():
        raise SuiteError(f"{suite} has no node_modules/undici: run `npm install --omit=dev` in it")


def export_tests(suite: Path) -> list[dict[str, Any]]:
    """The suite's test list (id, name, kind, dependencies, group), as its own `tests/index.mjs` declares it."""
    done = subprocess.run([node(), "--input-type=module", "-e", EXPORT, str(suite / TESTS)], cwd=suite,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SuiteError(f"exporting the suite's tests failed:\n{done.stderr[-2000:]}")
    tests: list[dict[str, Any]] = json.loads(done.stdout)
    return tests


def describe(suite: Path) -> str:
    """The checkout's commit when it is a git work tree, else the package version."""
    with_git = subprocess.run(["git", "-C", str(suite), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)
    if with_git.returncode == 0:
        return with_git.stdout.strip()
    version = json.loads((suite / "package.json").read_text()).get("version", "?")
    return f"package version {version} (not a git checkout)"


def node_version() -> str:
    return subprocess.run([node(), "--version"], capture_output=True, text=True, check=False).stdout.strip()


def origin_command(suite: Path, port: int, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the suite's origin on loopback `port` (like `npm run server --port=PORT`)."""
    shim = tmp / "loopback.mjs"
    shim.write_text(LOOPBACK_SHIM)
    env = {**os.environ, "npm_config_protocol": "http", "npm_config_port": str(port),
           "npm_config_pidfile": str(tmp / "origin.pid")}
    return [node(), "--import", shim.as_uri(), str(SERVER)], env


def run(suite: Path, base: str, log: Path, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every test against `base` (like `npm run --silent cli --base=BASE`): the runner's JSON, its stderr in `log`."""
    env = {**os.environ, "npm_config_base": base, "npm_package_config_id": "", **(extra_env or {})}
    env.pop("npm_config_id", None)  # an inherited one would run a single test
    for proxy in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)  # everything stays on loopback; the suite also reads HTTP_PROXY as a forward proxy
    with open(log, "w") as err:
        done = subprocess.run([node(), "--no-warnings", str(CLI)], cwd=suite, env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=RUNNER_TIMEOUT, check=False)
    if done.returncode != 0:
        raise SuiteError(f"the suite's runner exited with {done.returncode} against {base}; see {log}")
    try:
        results: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"the suite's runner printed no JSON against {base} ({exc}); see {log}") from None
    return results

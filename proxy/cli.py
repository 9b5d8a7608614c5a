"""`python -m proxy --policy config/policy.yaml` runs the sidecar; `python -m proxy check FILE` validates."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from proxy.logs import configure
from proxy.policy import Address, Policy, PolicyError, Problem, load_policy
from proxy.policy.render import effective_policy
from proxy.policy.summary import summary


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-proxy", description="Egress resilience sidecar")
    parser.add_argument("--policy", default="config/policy.yaml", help="policy file (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egress-proxy check",
        description="Validate a policy file: every error with its line, or a short summary and `ok`.",
    )
    parser.add_argument("policy", nargs="?", help="policy file to validate")
    parser.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"), help="what changes from OLD (a policy file, or a "
                        "running sidecar's admin URL such as http://127.0.0.1:9901/policy) to the policy file NEW, "
                        "and what a reload would carry over; exit 0: no change, 1: changes, 2: trouble (like diff)")
    parser.add_argument("--show", action="store_true", help="print the full effective policy (JSON, secrets "
                        "redacted) instead of the summary")
    # Off by default: the check an operator runs before a reload sits next to the sidecar that holds these ports.
    parser.add_argument("--bind", action="store_true", help="also test that `listen` and `admin` can be bound "
                        "(before a first start; fails next to a running sidecar)")
    parser.add_argument("--no-bind", action="store_true", help=argparse.SUPPRESS)  # the old opt-out: now the default
    return parser


def _port_problem(address: Address, key: str, source: str) -> Problem | None:
    if address.port == 0:
        return None
    try:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no clash
            sock.bind((address.host, address.port))
    except OSError as exc:
        return Problem(source, address.line, key, f"cannot listen on {address}: {exc.strerror}")
    return None


def _by_line(problems: Sequence[Problem]) -> list[Problem]:
    """In file order: the loader reports by section (upstreams before `cache`), an operator reads top down."""
    return sorted(problems, key=lambda p: p.line)  # stable: problems on one line keep the loader's order


def _problems(file: str, exc: PolicyError) -> None:
    for problem in _by_line(exc.problems):
        print(problem, file=sys.stderr)
    print(f"{file}: {len(exc.problems)} error(s)", file=sys.stderr)


def _running_policy(url: str) -> dict[str, Any]:
    """A running sidecar's effective policy, from its admin `/policy` (the URL may stop at the port)."""
    from proxy.admin import RELOAD_KEY

    if not urllib.parse.urlsplit(url).path.strip("/"):
        url = url.rstrip("/") + "/policy"
    with urllib.request.urlopen(url, timeout=10) as response:  # http(s) only: checked by the caller
        shown: dict[str, Any] = json.loads(response.read())
    shown.pop(RELOAD_KEY, None)
    return shown


DIFF_TROUBLE = 2  # as diff(1): 0 the same, 1 different, 2 trouble


def check_diff(old: str, new: str) -> int:
    from proxy.diff import diff, report

    try:
        after = effective_policy(load_policy(new))
    except PolicyError as exc:
        _problems(new, exc)
        return DIFF_TROUBLE
    if old.startswith(("http://", "https://")):
        try:
            before = _running_policy(old)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; bad JSON a ValueError
            print(f"{old}: cannot read the running policy: {exc}", file=sys.stderr)
            return DIFF_TROUBLE
    else:
        try:
            before = effective_policy(load_policy(old))
        except PolicyError as exc:
            _problems(old, exc)
            return DIFF_TROUBLE
    result = diff(before, after)
    print("\n".join(report(old, new, result)))
    return 1 if result.changed else 0


def check(argv: Sequence[str]) -> int:
    parser = _check_parser()
    args = parser.parse_args(argv)
    if args.diff:
        if args.policy is not None:
            parser.error("give either FILE or --diff OLD NEW")
        return check_diff(*args.diff)
    if args.policy is None:
        parser.error("a policy file is required (or --diff OLD NEW)")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        _problems(args.policy, exc)
        return 1
    problems = [] if not args.bind else [
        p for p in (
            _port_problem(policy.listen, "listen", policy.source),
            _port_problem(policy.admin.listen, "admin", policy.source),
        ) if p is not None
    ]
    if args.show:
        print(json.dumps(effective_policy(policy), indent=2))
    else:
        print("\n".join(summary(policy)))
    for problem in _by_line(problems):
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{args.policy}: ok", file=sys.stderr)
    return 0


def run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    try:
        policy: Policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    from proxy.server import serve

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional (speed only)
        pass
    try:
        asyncio.run(serve(policy))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        return check(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

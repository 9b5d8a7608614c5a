"""`python -m proxy --policy config/policy.yaml` runs the sidecar; `python -m proxy check FILE` validates."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence

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
    parser.add_argument("policy", help="policy file to validate")
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


def check(argv: Sequence[str]) -> int:
    args = _check_parser().parse_args(argv)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        for problem in _by_line(exc.problems):
            print(problem, file=sys.stderr)
        print(f"{args.policy}: {len(exc.problems)} error(s)", file=sys.stderr)
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

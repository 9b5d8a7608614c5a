"""`python -m inbox_backend`: serve the inbox backend (settings from the environment, see settings.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from inbox_backend.app import create_app
from inbox_backend.serving import serve
from inbox_backend.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inbox_backend", description="WhatsApp inbox backend")
    parser.add_argument("--listen", help="HOST:PORT, overrides INBOX_LISTEN (default 127.0.0.1:8000)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env(listen=args.listen)
    except SettingsError as exc:
        print(f"inbox backend: {exc}", file=sys.stderr)
        return 2
    egress = "direct to the upstreams" if settings.direct else f"through the sidecar ({settings.sidecar_admin_url})"
    host, port = settings.host, settings.port
    print(f"inbox backend on http://{host}:{port}, egress {egress}", flush=True)
    asyncio.run(serve(create_app(settings), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

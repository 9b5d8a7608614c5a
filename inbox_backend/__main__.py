"""`python -m inbox_backend`: serve the inbox backend (settings from the environment, see settings.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from yarl import URL

from inbox_backend.app import create_app
from inbox_backend.serving import serve
from inbox_backend.settings import Settings, SettingsError


def egress(settings: Settings) -> str:
    """Where calls go, as an operator would curl it: the sidecar's data plane (its admin port only answers health
    and breakers), one origin when every upstream goes through the same sidecar."""
    if settings.direct:
        return "direct to the upstreams"
    origins = {str(URL(url).origin()) for _, url in settings.sidecar_urls}
    where = origins.pop() if len(origins) == 1 else ", ".join(url for _, url in settings.sidecar_urls)
    return f"through the sidecar at {where} (its admin port {settings.sidecar_admin_url})"


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
    print(f"inbox backend on http://{settings.host}:{settings.port}, egress {egress(settings)}", flush=True)
    asyncio.run(serve(create_app(settings), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m inbox_backend.simulator``: run the simulated upstreams until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .config import (
    CONTROL,
    DEFAULT_PORTS,
    GEMINI,
    SERVERS,
    SUPABASE,
    WHATSAPP,
    WHATSAPP_MEDIA,
    SimulatorConfig,
)
from .server import run_simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inbox_backend.simulator",
        description="Fault-injecting simulator of Gemini, WhatsApp Cloud (Graph + media) and Supabase.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    for name, flag in (
        (GEMINI, "--gemini-port"),
        (WHATSAPP, "--whatsapp-port"),
        (WHATSAPP_MEDIA, "--media-port"),
        (SUPABASE, "--supabase-port"),
        (CONTROL, "--control-port"),
    ):
        parser.add_argument(
            flag,
            type=int,
            default=DEFAULT_PORTS[name],
            dest=f"port_{name}",
            help=f"port of the {name} server (default: %(default)s; 0 = any free port)",
        )
    defaults = SimulatorConfig()
    parser.add_argument("--gemini-key", default=defaults.gemini_api_key, help="valid Gemini API key")
    parser.add_argument(
        "--whatsapp-token", default=defaults.whatsapp_token, help="valid WhatsApp bearer token"
    )
    parser.add_argument(
        "--supabase-anon-key", default=defaults.supabase_anon_key, help="valid Supabase apikey"
    )
    parser.add_argument(
        "--supabase-service-key",
        default=defaults.supabase_service_key,
        help="second valid Supabase apikey (service role)",
    )
    parser.add_argument(
        "--media-base-url",
        default=None,
        help="base URL put in media info answers (default: this simulator's media server)",
    )
    parser.add_argument(
        "--media-size",
        type=int,
        default=defaults.default_media_size,
        help="default media download size in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-gap",
        type=float,
        default=defaults.stream_chunk_gap,
        help="seconds between Gemini stream chunks (default: %(default)s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


async def serve(args: argparse.Namespace) -> None:
    config = SimulatorConfig(
        gemini_api_key=args.gemini_key,
        whatsapp_token=args.whatsapp_token,
        supabase_anon_key=args.supabase_anon_key,
        supabase_service_key=args.supabase_service_key,
        media_base_url=args.media_base_url.rstrip("/") if args.media_base_url else None,
        default_media_size=args.media_size,
        stream_chunk_gap=args.stream_gap,
    )
    ports = {name: getattr(args, f"port_{name}") for name in SERVERS}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with run_simulator(args.host, ports, config=config, access_log=args.access_log) as sim:
        for name in SERVERS:
            print(f"{name:15} {sim.urls[name]}", flush=True)
        print("simulator ready (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("simulator stopping", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"simulator: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

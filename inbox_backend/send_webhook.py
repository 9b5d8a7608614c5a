"""`python -m inbox_backend.send_webhook "hello"`: post a signed WhatsApp webhook, as Meta would.

By default: a text message from Alice (15550001001) to the sample account "Acme Bakery", signed with
WHATSAPP_APP_SECRET (the local default), sent to the backend at INBOX_LISTEN (127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from inbox_backend.settings import Settings
from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, signature, text_message


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inbox_backend.send_webhook", description=__doc__.split("\n")[0])
    parser.add_argument("text", help="the message text")
    parser.add_argument("--url", default=f"http://{settings.host}:{settings.port}/webhook", help="%(default)s")
    parser.add_argument("--from", dest="wa_id", default="15550001001", help="sender's WhatsApp id (%(default)s)")
    parser.add_argument("--name", default="Alice", help="sender's profile name (%(default)s)")
    parser.add_argument("--phone-number-id", default="106540352242922", help="receiving number's id (%(default)s)")
    parser.add_argument("--message-id", help="WhatsApp message id (default: a new one; reuse one to redeliver)")
    parser.add_argument("--secret", default=settings.whatsapp_app_secret, help="app secret to sign with")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = build_parser(settings).parse_args(argv)
    payload = message_webhook(
        text_message(args.text, args.message_id), wa_id=args.wa_id, phone_number_id=args.phone_number_id, name=args.name
    )
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        args.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature(body, args.secret)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode(), file=sys.stderr)
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

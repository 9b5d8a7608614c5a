"""WhatsApp Cloud API: send a text message, resolve a media id to its download URL."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from yarl import URL

from inbox_backend.egress import Call, Caller
from inbox_backend.errors import DELIVERY_UNKNOWN, ApiError
from inbox_backend.settings import Settings, Upstream
from inbox_backend.webhook_payload import MEDIA_ID


def media_download_path(media_url: str) -> str:
    """The media URL Graph returns, as a path (with query) under the `whatsapp_media` upstream.

    Graph answers with an absolute URL on the real media host (lookaside.fbsbx.com). Fetching it as
    given would bypass the sidecar (no timeout, breaker or bulkhead on the biggest downloads), so the
    host is dropped and the path + query (which carries the access token's signature) are kept: the
    download then goes to the `whatsapp_media` base URL, the sidecar's in sidecar mode, the real host
    in direct mode.
    """
    url = URL(media_url)
    if not url.is_absolute() or not url.path.startswith("/"):
        raise ApiError(502, "external_api_unavailable", detail=f"unusable media url from Graph: {media_url!r}")
    return url.raw_path_qs


class WhatsApp:
    def __init__(self, caller: Caller, settings: Settings) -> None:
        self.caller = caller
        self.version = settings.graph_version

    async def send_text(self, phone_number_id: str, to: str, text: str) -> str:
        """The WhatsApp message id (wamid) of the sent message."""
        call = Call(
            Upstream.WHATSAPP,
            "POST",
            f"/{self.version}/{phone_number_id}/messages",
            json={
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": {"preview_url": False, "body": text},
            },
        )
        try:
            data = (await self.caller.send(call)).data
        except ApiError as exc:
            if exc.delivery == "unknown":  # it may have been delivered: never "failed", never blindly resent
                raise ApiError(502, DELIVERY_UNKNOWN, detail=f"the send's outcome is unknown: {exc.detail}",
                               delivery="unknown") from exc
            raise
        return _first_message_id(data)

    async def media_path(self, media_id: str) -> str:
        """The download path (with query) under the `whatsapp_media` upstream."""
        if not MEDIA_ID.fullmatch(media_id):  # it becomes a path segment: no "..", no "/", no "?"
            raise ApiError(404, "no_media", detail=f"{media_id!r} is not a WhatsApp media id")
        data = (await self.caller.send(Call(Upstream.WHATSAPP, "GET", f"/{self.version}/{media_id}"))).data
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise ApiError(502, "external_api_unavailable", detail="Graph media info without a url")
        return media_download_path(url)

    def download(self, path: str) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self.caller.stream(Call(Upstream.WHATSAPP_MEDIA, "GET", path))


def _first_message_id(data: Any) -> str:
    messages = data.get("messages") if isinstance(data, dict) else None
    if messages and isinstance(messages[0], dict) and isinstance(messages[0].get("id"), str):
        return str(messages[0]["id"])
    raise ApiError(502, "external_api_unavailable", detail="WhatsApp accepted the message without an id")

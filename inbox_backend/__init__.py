"""The WhatsApp inbox backend: the egress sidecar's first user.

    app                   wiring: middlewares, routes, the state's life cycle
    serving               the listening socket's bounds: header timeout, keep-alive, connection count
    settings              environment variables -> a frozen Settings
    state                 the one object the app owns (session, metrics, background tasks)
    middleware            request id, access log + metrics, the error body
    webhook, routes, ops  HTTP handlers (WhatsApp, the user API, health/metrics/breakers)
    inputs                what callers send: bodies, ids, the bearer user
    bounded_json          a caller's JSON within bounds (depth, finite numbers, UTF-8)
    conversations, bot    what the inbox does: store inbound, send outbound, reply
    egress, errors        every outbound call, and how its failures become API errors
    database, auth, gemini, whatsapp   the upstream APIs
    webhook_payload       signatures, parsing and building WhatsApp webhooks
    stack, send_webhook   `make run` and its curl-able helper
"""

__version__ = "0.1.0"  # the project's version (pyproject.toml), in inbox_build_info

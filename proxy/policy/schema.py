"""The policy schema: every key of the policy file declared once.

Each key is a `Field` (one value of one `Kind`), a `Section` (a mapping read onto one of the model's frozen
dataclasses) or a `Group` (a key holding the keys of another level: `defaults`, `upstreams.<name>`, `routes[]`).
Each says where it may appear (`top`, `defaults`, `upstream`, `route`), its one-line documentation and whether it is
secret. From this one declaration come the loader's checks (unknown keys, types, ranges, a key at a level it is not
for), the inheritance defaults -> upstream -> route, the effective policy that `check` and `GET /policy` show (secrets
redacted, `render.py`) and the README's policy table (`reference.py`).

A default is the model dataclass's own (it has to be: downstream code builds `Timeouts()`), unless the model has
none for it and the field declares one (`listen`); `default_text` only says how the README writes it, where the
policy adds to a built-in list rather than replacing it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Literal

from yarl import URL

from proxy.policy.glob import Glob
from proxy.policy.model import (
    CREDENTIAL_HEADERS,
    OUTCOME_CONDITIONS,
    SECRET_QUERY_NAMES,
    Address,
    AdminSettings,
    Backoff,
    BreakerPolicy,
    CacheSettings,
    Conditions,
    Hedge,
    KeyPart,
    KeyTemplate,
    Limits,
    ListenerLimits,
    Policy,
    Rate,
    RateLimit,
    RateLimitPolicy,
    Redaction,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteCache,
    ThrottleRule,
    Timeouts,
    Upstream,
)
from proxy.policy.redact import REDACTED, redact_url
from proxy.policy.source import Invalid, Located, shown
from proxy.policy.units import format_duration, format_size, parse_duration

Level = Literal["top", "defaults", "upstream", "route"]
LEVELS: tuple[Level, ...] = ("top", "defaults", "upstream", "route")
TOP: frozenset[Level] = frozenset({"top"})
UPSTREAM: frozenset[Level] = frozenset({"upstream"})
ROUTE: frozenset[Level] = frozenset({"route"})
PER_UPSTREAM: frozenset[Level] = frozenset({"defaults", "upstream"})
INHERITABLE: frozenset[Level] = frozenset({"defaults", "upstream", "route"})
# The model a level's own keys (those not in a section) are attributes of, for their defaults.
LEVEL_MODELS: Mapping[Level, type] = {"top": Policy, "upstream": Upstream, "route": Route}

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_LIMIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CAPTURE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_KEY_REF = re.compile(r"\{([^{}]*)\}")
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9.]*\s*[a-z]+)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
               "hour": 3600.0}
MAX_RATE_COUNT = 1_000_000


# -- kinds of value ------------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _hidden(value: Any, _: Collection[str]) -> Any:
    """A secret's stand-in: it shows that one is set, never what it is."""
    return REDACTED if value else None


def _listed(values: Collection[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """One kind of value: how the loader reads it (raising `Invalid` with what was expected and what was found),
    how the effective policy shows it (plain JSON), how the README writes it, and how a secret one is redacted."""

    read: Callable[[Located], Any]
    show: Callable[[Any], Any] = _same
    text: Callable[[Any], str] = str
    redact: Callable[[Any, Collection[str]], Any] = _hidden


def _positive_duration(node: Located) -> float:
    value = node.duration()
    if value <= 0:
        raise Invalid("expected a duration greater than 0")
    return value


def count(minimum: int, maximum: int | None = None) -> Kind:
    return Kind(lambda node: node.integer(minimum, maximum))


def number(minimum: float, maximum: float | None = None) -> Kind:
    return Kind(lambda node: node.number(minimum, maximum), text=lambda value: f"{value:g}")


def bounded_size(minimum: int) -> Kind:
    def read(node: Located) -> int:
        value = node.size()
        if value < minimum:
            raise Invalid(f"expected a size of at least {minimum} bytes, got {value}")
        return value

    return Kind(read, text=format_size)


def choice(*options: str) -> Kind:
    return Kind(lambda node: node.choice(options))


def _conditions(node: Located) -> Conditions:
    """`[connect_error, timeout, 5xx, 401]` -> named outcomes, exact statuses and status classes."""
    names: set[str] = set()
    statuses: set[int] = set()
    classes: set[int] = set()
    for item in node.sequence():
        raw = item.text().strip()
        if raw in OUTCOME_CONDITIONS:
            names.add(raw)
        elif re.fullmatch(r"[1-5]xx", raw):
            classes.add(int(raw[0]))
        elif re.fullmatch(r"[1-5][0-9][0-9]", raw):  # ASCII: '²'.isdigit() is true and int('²') fails
            statuses.add(int(raw))
        else:
            expected = ", ".join(sorted(OUTCOME_CONDITIONS))
            item.report(f"expected {expected}, a status like 503 or a class like 5xx, got {shown(raw)}")
    return Conditions(frozenset(names), frozenset(statuses), frozenset(classes))


def _address(node: Located) -> Address:
    raw = node.text().strip()
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:([0-9]+)", raw)
    if not match or not match.group(1):
        raise Invalid(f"expected host:port like '127.0.0.1:8081', got {shown(raw)}")
    if len(match.group(2)) > 5 or int(match.group(2)) > 65535:  # int() of 5,000 digits raises
        raise Invalid(f"expected a port from 0 to 65535, got {shown(match.group(2))[1:-1]}")
    return Address(match.group(1), int(match.group(2)), node.line)


def _url(node: Located) -> URL:
    """Every message quotes the URL through `shown`: a password in it never reaches `check` or `/reload`'s body."""
    raw = node.text().strip()
    try:
        url = URL(raw)
        url.port  # noqa: B018  (yarl checks the port lazily: 'h:99999' would fail on the first request)
    except (ValueError, TypeError):
        raise Invalid(f"expected an http(s) URL, got {shown(raw)}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid(f"expected an http(s) URL like 'https://api.example.com', got {shown(raw)}")
    if url.raw_user is not None or url.raw_password is not None:
        # aiohttp turns URL userinfo into an Authorization header and refuses a request that also carries the
        # caller's own (a 500 for every such call); a header from the policy is explicit and never logged.
        raise Invalid(
            f"the URL must not carry credentials (user:password@), got {shown(raw)}: inject them with the "
            "upstream's headers instead, e.g. headers: {Authorization: \"Basic ${UPSTREAM_BASIC_AUTH}\"}"
        )
    if url.query_string or url.fragment:
        raise Invalid(f"the base URL must not carry a query or fragment, got {shown(raw)}")
    return url


def _redis_url(node: Located) -> str:
    raw = node.text().strip()
    try:
        url = URL(raw)
        url.port  # noqa: B018  (yarl checks the port lazily)
    except (ValueError, TypeError) as exc:
        # yarl's reason may quote a piece of the URL: shown, like the URL, so no password reaches the message.
        raise Invalid(f"expected a redis URL like 'redis://127.0.0.1:6379/0', got {shown(raw)}: "
                      f"{_without(str(exc), raw)}") from None
    if url.scheme not in ("redis", "rediss") or not url.host:
        raise Invalid(f"expected a redis URL like 'redis://127.0.0.1:6379/0', got {shown(raw)}")
    return raw


def _without(reason: str, raw: str) -> str:
    """`reason` with any credential in `raw` (the userinfo, the query) taken out."""
    userinfo = raw.partition("://")[2].rpartition("@")[0]
    secrets = [userinfo, *userinfo.split(":"), raw.partition("?")[2]]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        reason = reason.replace(secret, "<redacted>")
    return shown(reason)[1:-1]


def _headers(node: Located) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, child in node.mapping().items():
        if not _HEADER_NAME.match(key):
            child.report(f"not a valid header name: {shown(key)}")
            continue
        value = child.read(lambda n: n.text())
        if value is not None and ("\r" in value or "\n" in value):
            child.report("a header value must not contain line breaks")
            continue
        if value:  # an empty injected credential means "let the caller's own header through"
            pairs.append((key, value))
    return tuple(pairs)


def _added_headers(node: Located) -> tuple[str, ...]:
    """Header names added to the default credential headers (which cannot be shortened)."""
    names = list(CREDENTIAL_HEADERS)
    for item in node.sequence():
        name = item.read(Located.text)
        if name is not None and not _HEADER_NAME.match(name):
            item.report(f"not a valid header name: {name!r}")
        elif name is not None and name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def _vary(node: Located) -> tuple[str, ...]:
    vary = list(CREDENTIAL_HEADERS)
    for header in node.texts():
        if header.lower() not in vary:
            vary.append(header.lower())
    return tuple(vary)


def _query_names(node: Located) -> frozenset[str]:
    """Names added to the default list (which cannot be shortened)."""
    names = set(SECRET_QUERY_NAMES)
    for item in node.sequence():
        name = item.read(Located.text)
        if name is not None and not name.strip():
            item.report("expected a query parameter name, got an empty one")
        elif name is not None:
            names.add(name.strip().lower())  # compared lowercased and decoded (see redact.redact_query)
    return frozenset(names)


def _route_name(node: Located) -> str:
    name = node.text()
    if not _ROUTE_NAME.match(name) or name == "default":
        raise Invalid(f"expected a route name of letters, digits, '_', '-', '.' (not 'default'), got {shown(name)}")
    return name


def _match(node: Located) -> tuple[str | None, str]:
    raw = node.text().strip()
    parts = raw.split()
    if len(parts) == 1:
        parts = ["ANY", parts[0]]
    if len(parts) != 2:
        raise Invalid(f"expected 'METHOD /path/glob' like 'POST /v19.0/*/messages', got {shown(raw)}")
    method, glob = parts[0].upper(), parts[1]
    if method != "ANY" and method not in HTTP_METHODS:
        raise Invalid(f"expected an HTTP method or ANY, got {shown(parts[0])}")
    if not glob.startswith("/"):
        raise Invalid(f"the path glob must start with '/', got {shown(glob)}")
    try:
        Glob(glob)
    except ValueError as exc:
        raise Invalid(f"{exc} (in {shown(glob)})") from None
    return (None if method == "ANY" else method), glob


def _rate(node: Located) -> Rate:
    """`80/s`, `1/6s`, `1000/min`, `5/500ms`: a whole count over a unit or a duration."""
    raw = node.text().strip()
    match = _RATE.match(raw)
    expected = f"expected a rate like '80/s', '1/6s' or '1000/min', got {shown(raw)}"
    if not match:
        raise Invalid(expected)
    digits, per_text = match.group(1), match.group(2)
    count = int(digits) if len(digits) <= len(str(MAX_RATE_COUNT)) else MAX_RATE_COUNT + 1  # no int() of 5,000 digits
    per = _RATE_UNITS.get(per_text.strip())
    if per is None:
        try:
            per = parse_duration(per_text)
        except ValueError:
            raise Invalid(expected) from None
    if not 1 <= count <= MAX_RATE_COUNT or per <= 0:
        raise Invalid(f"expected from 1 to {MAX_RATE_COUNT} requests over a duration greater than 0, got {shown(raw)}")
    return Rate(count, per)


def _limit_name(node: Located) -> str:
    name = node.text().strip()
    if not _LIMIT_NAME.match(name):
        raise Invalid(f"expected a limit name of lowercase letters, digits, '_' and '-' (a metric label), got "
                      f"{shown(name)}")
    return name


def _key_template(node: Located) -> KeyTemplate:
    """`"{phone_id}:{body.to}"`: literal text and references to a path capture (`{name}`), a request header
    (`{header.x-tenant}`) or a dotted field of a JSON body (`{body.to}`, `{body.recipient.id}`)."""
    raw = node.text()
    parts: list[KeyPart] = []
    last = 0
    for match in _KEY_REF.finditer(raw):
        if match.start() > last:
            parts.append(KeyPart("text", raw[last:match.start()]))
        ref = match.group(1).strip()
        kind, dot, rest = ref.partition(".")
        if not dot and _CAPTURE_NAME.match(ref):
            parts.append(KeyPart("capture", ref))
        elif dot and kind == "header" and _HEADER_NAME.match(rest):
            parts.append(KeyPart("header", rest.lower()))
        elif dot and kind == "body" and all(piece.strip() for piece in rest.split(".")):
            parts.append(KeyPart("body", rest))
        else:
            raise Invalid("expected {name} (a capture of the route's match), {header.<name>} or "
                          f"{{body.<field>}} in a key, got {shown('{' + match.group(1) + '}')}")
        last = match.end()
    if last < len(raw):
        parts.append(KeyPart("text", raw[last:]))
    if any(part.kind == "text" and ("{" in part.name or "}" in part.name) for part in parts):
        raise Invalid(f"a brace in a key starts a reference like {{phone_id}}: unbalanced in {shown(raw)}")
    return KeyTemplate(raw, tuple(parts))


def _replicas(node: Located) -> int | None:
    if node.text().strip() == "auto":
        return None
    return node.integer(1, 10_000)


DURATION = Kind(Located.duration, format_duration, format_duration)
POSITIVE_DURATION = Kind(_positive_duration, format_duration, format_duration)
SIZE = Kind(Located.size, text=format_size)
OPTIONAL_SIZE = Kind(lambda node: None if node.is_null() else node.size(), text=format_size)
BOOLEAN = Kind(Located.boolean, text=lambda value: str(value).lower())
TEXT = Kind(Located.text)
OPTIONAL_TEXT = Kind(lambda node: node.text() or None)
STATUS = Kind(Located.status)
CONDITIONS = Kind(_conditions, Conditions.describe, lambda c: _listed(c.describe()))
ADDRESS = Kind(_address, str)
URL_KIND = Kind(_url, str, redact=redact_url)
REDIS_URL = Kind(_redis_url, redact=redact_url)
HEADERS = Kind(_headers, redact=lambda pairs, _: {name: REDACTED for name, _value in pairs})
ADDED_HEADERS = Kind(_added_headers, list, _listed)
VARY = Kind(_vary, list, _listed)
STATUSES = Kind(lambda node: frozenset(s.status() for s in node.sequence()), sorted, lambda s: _listed(sorted(s)))
CODES = Kind(lambda node: frozenset(node.texts()), sorted, lambda s: _listed(sorted(s)))
QUERY_NAMES = Kind(_query_names, sorted)
ROUTE_NAME = Kind(_route_name)
MATCH = Kind(_match)
RATE = Kind(_rate, str, str)
LIMIT_NAME = Kind(_limit_name)
LIMIT_NAMES = Kind(lambda node: frozenset(map(_limit_name, node.sequence())), sorted, lambda s: _listed(sorted(s)))
KEY_TEMPLATE = Kind(_key_template, lambda key: key.text, lambda key: key.text)
REPLICAS = Kind(_replicas, text=lambda value: "auto" if value is None else str(value))


# -- the nodes of the schema ---------------------------------------------------------------------------


class _FromModel:
    def __repr__(self) -> str:
        return "FROM_MODEL"


FROM_MODEL: Any = _FromModel()  # a field's default is its model attribute's


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One key holding one value."""

    key: str
    kind: Kind
    doc: str
    levels: frozenset[Level] = frozenset()  # empty: wherever its section may appear
    secret: bool = False  # shown redacted by `check` and `GET /policy`
    required: str = ""  # when set, the key is required and this is the message when it is missing
    default: Any = FROM_MODEL
    default_text: str = ""  # how the README writes the default, when not the default's own text
    elsewhere: str = ""  # why the key is refused at a level where its section is allowed but it is not
    attr: str = ""  # the model attribute it sets, when not named like the key
    get: Callable[[Any], Any] | None = None  # what the effective policy shows, when not the attribute

    @property
    def name(self) -> str:
        return self.attr or self.key


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    """A mapping read onto a frozen dataclass: over an inherited value (`timeouts`), or a new one (`cache` of a
    route). `many`: a list of them (`throttle`)."""

    key: str
    model: type
    fields: tuple[Field | Section, ...]
    doc: str = ""
    levels: frozenset[Level] = frozenset()
    many: bool = False
    elsewhere: str = ""
    # A rule across keys, run on the result: (value, inherited value or None, node). It reports, or raises Invalid.
    check: Callable[[Any, Any, Located], None] | None = None

    @property
    def name(self) -> str:
        return self.key

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)

    def field(self, key: str) -> Field | Section:
        return next(f for f in self.fields if f.key == key)


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """A key whose value holds the keys of another level: a mapping of them (`defaults`), a mapping of named ones
    (`upstreams`), or a list (`routes`). `doc` may name those keys as `{keys}`."""

    key: str
    holds: Level
    doc: str
    levels: frozenset[Level]
    shape: Literal["one", "named", "list"] = "one"

    @property
    def name(self) -> str:
        return self.key


Node = Field | Section | Group


# -- cross-key rules -----------------------------------------------------------------------------------


def _backoff_order(retry: RetryPolicy, inherited: RetryPolicy | None, node: Located) -> None:
    """Reported where the backoff is set, not again at every level that merely inherits it."""
    if inherited is not None and retry.backoff != inherited.backoff and retry.backoff.max < retry.backoff.base:
        node.report(f"backoff.max ({retry.backoff.max}s) must not be less than backoff.base")


def _unique_limit_names(policy: RateLimitPolicy, _: Any, node: Located) -> None:
    seen: set[str] = set()
    for i, limit in enumerate(policy.limits):
        if limit.name in seen:
            (node.find("limits", i, "name") or node).report(f"a second limit named {limit.name!r} in this rate_limit")
        seen.add(limit.name)


def _codes_need_a_field(rule: ThrottleRule, _: Any, __: Located) -> None:
    if rule.codes and not rule.field:
        raise Invalid("'codes' needs a 'field' naming where the code is in the JSON body, e.g. error.code")


# -- the schema ----------------------------------------------------------------------------------------

LISTEN = Field("listen", ADDRESS, "data plane address", TOP, default=Address("127.0.0.1", 8081))
ADMIN_LISTEN = Field("listen", ADDRESS, "admin address", default=Address("127.0.0.1", 9901))
ADMIN = Section("admin", AdminSettings, (
    ADMIN_LISTEN,
    Field("token", OPTIONAL_TEXT, "when set, mutating admin endpoints need `Authorization: Bearer <token>`; required "
          "when `admin` is beyond loopback", secret=True),
), "the admin port: its address alone (`admin: 127.0.0.1:9901`), or `{listen: ..., token: ...}`", TOP)
SHUTDOWN_GRACE = Field("shutdown_grace", DURATION, "how long in-flight requests may finish on SIGTERM", TOP)
LISTENER_LIMITS = Section("limits", ListenerLimits, (
    Field("max_header_bytes", bounded_size(1024), "the data port's bound on one request head (request line and "
          "headers, as sent); over it: 431"),
    Field("max_headers", count(1), "headers one request may carry; more: 431"),
    Field("header_timeout", POSITIVE_DURATION, "a request head must be complete this long after its first byte "
          "(after the accept, for a connection's first request); else 408 and close"),
    Field("idle_timeout", POSITIVE_DURATION, "a kept-alive caller connection with no request is closed after this"),
    Field("max_connections", count(1), "open caller connections; one more is answered 503 `overloaded` and closed"),
), "top-level `limits` are the data port's, per caller (`defaults.limits` and `upstreams.<name>.limits` are per "
   "upstream); a reload applies them to connections accepted after it", TOP)
DEFAULTS = Group("defaults", "defaults", "{keys} inherited by every upstream", TOP)
UPSTREAMS = Group("upstreams", "upstream", "`<name>` is the first path segment of a call (lowercase letters, "
                  "digits, `_`, `-`); keys: {keys}", TOP, "named")
URL_FIELD = Field("url", URL_KIND, "base URL (`http`/`https`, may have a path prefix)", UPSTREAM, secret=True,
                  required="missing key 'url' (the upstream's base URL, e.g. https://graph.facebook.com)")
HEADERS_FIELD = Field("headers", HEADERS, "headers injected upstream, overriding the caller's (credentials can live "
                      "in the sidecar only); an empty value is not sent", UPSTREAM, secret=True, default=(),
                      default_text="{}")
ROUTES = Group("routes", "route", "keys: {keys}; first match wins; no match uses the upstream's settings under the "
               "route name `default`", UPSTREAM, "list")
ROUTE_NAME_FIELD = Field("name", ROUTE_NAME, "the route's name in metrics, logs and `DELETE /cache`", ROUTE,
                         required="a route needs 'name'")
MATCH_FIELD = Field("match", MATCH, "`METHOD /path/glob`: `*` within a segment, `**` across segments, `{name}` "
                    "captures one segment's text for `rate_limit` keys (`POST /v19.0/{phone_id}/messages`); method "
                    "`ANY` or omitted for any", ROUTE, required="a route needs 'match'",
                    get=lambda route: f"{route.method or 'ANY'} {route.glob}")
IDEMPOTENT = Field("idempotent", BOOLEAN, "safe to replay: retried on every `on` condition whatever the method",
                   ROUTE)
TIMEOUTS = Section("timeouts", Timeouts, (
    Field("connect", POSITIVE_DURATION, "TCP + TLS connect"),
    Field("read", POSITIVE_DURATION, "longest gap between bytes from the upstream (a stream's body is bounded by "
          "this only)"),
    Field("write", POSITIVE_DURATION, "longest stall while handing the request body to the upstream"),
    Field("pool", DURATION, "longest wait for a free slot of the upstream (bulkhead queue)"),
    Field("total", POSITIVE_DURATION, "the request's deadline: every attempt and wait, and a body of known length"),
), levels=INHERITABLE)
RETRY = Section("retry", RetryPolicy, (
    Field("attempts", count(1), "tries in all, the first included"),
    Section("backoff", Backoff, (
        Field("base", DURATION, "the first wait's bound"),
        Field("max", DURATION, "no wait is longer; a 503's `Retry-After` above it is not waited for (a throttle "
              "signal's delay is waited for whenever it fits the deadline)"),
    ), "exponential with full jitter (`backoff` library)"),
    Field("on", CONDITIONS, "conditions: `connect_error`, `reset`, `timeout`, a status, or a class like `5xx`"),
    Section("budget", RetryBudget, (
        Field("ratio", number(0.0, 1.0), "retries may be this share of the upstream's requests"),
        Field("min_per_second", number(0.0), "retries allowed per second whatever the ratio"),
    ), "per upstream (its own level's setting), over a 10 s sliding window", PER_UPSTREAM,
        elsewhere="the retry budget is per upstream: set it on the upstream or in defaults (a route's would be "
        "ignored)"),
    Field("max_body", SIZE, "request bodies up to this are buffered so they can be replayed; larger ones stream and "
          "are not retried"),
), levels=INHERITABLE, check=_backoff_order)
BREAKER = Section("breaker", BreakerPolicy, (
    Field("failures", count(1), "consecutive counted failures that open the breaker"),
    Field("reset_after", POSITIVE_DURATION, "open time before one trial request is let through"),
    Field("count", CONDITIONS, "outcomes that count (4xx never, unless listed)"),
    Field("mode", choice("enforce", "observe"), "`observe`: it counts, opens and trials as usual, but its refusals "
          "are only counted (`egress_observed_total`) and logged, and the request goes on: a threshold rehearsed on "
          "live traffic (an operator's open is enforced anyway)"),
), "a route with its own `breaker:` gets its own breaker `upstream.route`", INHERITABLE)
LIMITS = Section("limits", Limits, (
    Field("max_concurrent", count(1), "requests in flight per upstream"),
    Field("max_queue", count(0), "requests waiting for a slot (up to `timeouts.pool`); beyond: 503 `overloaded`"),
    Field("max_request_body", OPTIONAL_SIZE, "larger request bodies get 413"),
    Field("keepalive", DURATION, "an idle pooled connection to the upstream is reused up to this long (below Node's "
          "and Apache's 5 s server idle timeout, so a request never goes out on a connection the server is "
          "closing)"),
    Field("keepalive_non_idempotent", DURATION, "a request that may not be replayed (POST, PATCH without "
          "`Idempotency-Key`) only goes out on a connection used this recently, or a new one (`0s`: always a new "
          "one)"),
    Field("mode", choice("enforce", "observe"), "`observe`: a request beyond `max_concurrent` + `max_queue` is "
          "counted (`egress_observed_total`), logged and sent anyway"),
), levels=PER_UPSTREAM)
THROTTLE = Section("throttle", ThrottleRule, (
    Field("status", STATUS, "the status that may signal throttling (any 429 does)",
          required="a throttle rule needs a 'status' (e.g. 429, or 400 for WhatsApp's 130429)"),
    Field("field", OPTIONAL_TEXT, "JSON path of a code in the body, e.g. `error.code`"),
    Field("codes", CODES, "values at `field` that mean throttling (compared as text)"),
    Field("delay_field", OPTIONAL_TEXT, "JSON path of the delay (`\"7s\"` or seconds), used when there is no "
          "`Retry-After`"),
    Field("delay", DURATION, "the delay when neither `Retry-After` nor `delay_field` says"),
    Field("limits", LIMIT_NAMES, "names of the route's `rate_limit` limits this answer is about (a per-key limit, "
          "e.g. WhatsApp's pair limit for `131056`): it holds just those keys, on every replica, instead of the "
          "whole upstream; `[]`: the whole upstream and all of the request's limits", default_text="[]"),
), "a response with `status` (and, if `field` is set, a JSON value at `field` in `codes`) is throttling",
    PER_UPSTREAM, many=True, check=_codes_need_a_field)
CACHE = Section("cache", CacheSettings, (
    Field("backend", choice("memory", "redis"), "`memory` (in-process LRU) or `redis` (shared by all replicas)"),
    Field("redis_url", REDIS_URL, "the Redis for `backend: redis`", secret=True),
    Field("max_entries", count(1), "memory backend LRU bound: entries"),
    Field("max_bytes", SIZE, "memory backend LRU bound: stored body bytes"),
    Field("max_body", SIZE, "larger responses are never cached (they stream through)"),
    Field("op_timeout", POSITIVE_DURATION, "the most one cache operation may add to a request; past it the request "
          "goes on uncached"),
    Field("namespace", TEXT, "prefix of every Redis key (several sidecar fleets may share one Redis)"),
    Field("credential_headers", ADDED_HEADERS, "request headers that name the caller, added to the defaults ("
          + ", ".join(f"`{h}`" for h in CREDENTIAL_HEADERS) + "): their values are part of every cached route's "
          "key, so callers that differ in any of them never share an entry", default_text="[]"),
), levels=TOP)
REDACT = Section("redact", Redaction, (
    Field("query", QUERY_NAMES, "query parameter names whose values are hidden in every log line and on the admin "
          "port, added to the defaults (`GET /policy` lists them all); names compare decoded and "
          "case-insensitively, `&` and `;` both separate", default_text="[]"),
), levels=TOP)
ROUTE_CACHE = Section("cache", RouteCache, (
    Field("ttl", DURATION, "how long an entry is fresh when the upstream gives no freshness of its own "
          "(`Cache-Control: s-maxage` / `max-age`, `Expires`), and how long an answer with a validator (`ETag`, "
          "`Last-Modified`) is kept past it to be revalidated; with `override: true`, always the freshness",
          required="a route cache needs a 'ttl', e.g. cache: {ttl: 5m}"),
    Field("stale_if_error", DURATION, "how long past its freshness an entry may stand in for a failing upstream "
          "(an open breaker included), unless the upstream said `no-cache`, `must-revalidate`, "
          "`proxy-revalidate` or `s-maxage` (then never, RFC 9111 §4.2.4, unless `override: true`)"),
    Field("invalidate_on_write", BOOLEAN, "a 2xx/3xx answer to any unsafe method (not GET, HEAD, OPTIONS, TRACE) "
          "on the same upstream path invalidates every cached read of it, and of the paths its `Location` / "
          "`Content-Location` name (RFC 9111 §4.4); `false` opts out, e.g. for an API that reads with POST"),
    Field("statuses", STATUSES, "statuses the `ttl` applies to when the upstream says nothing (only those HTTP "
          "lets a cache guess for: 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501); any status the "
          "upstream marks cacheable (`max-age`, `s-maxage`, `Expires`, `public`) is cached by its own freshness"),
    Field("vary", VARY, "headers whose values are part of the key, in addition to the credential headers "
          "(`cache.credential_headers`) and the upstream's `Vary`", default_text="[]"),
    Field("override", BOOLEAN, "the route's policy wins over the upstream's caching headers: `ttl` is the "
          "freshness whatever `max-age` / `Expires` say, `no-cache` / `must-revalidate` are ignored, and answers "
          "are cached even when the upstream says `Cache-Control: no-store` / `private` (a "
          "`Set-Cookie` is then stripped)"),
), "GET and HEAD answers of this route are cached (absent: none are)", ROUTE)
HEDGE = Section("hedge", Hedge, (
    Field("after", POSITIVE_DURATION, "how long the first attempt may go unanswered before a hedge is sent",
          required="a hedge needs an 'after', e.g. hedge: {after: 200ms}"),
    Field("max", count(1, 3), "hedges at most, besides the first attempt (1 to 3)"),
), "For idempotent requests: when the first attempt has not answered after `after`, send up to `max` more; the "
   "first answer wins. Hedges count against the retry budget.", ROUTE)

RATE_LIMIT = Section("rate_limit", RateLimitPolicy, (
    Field("backend", choice("memory", "redis"), "where the budgets live: `memory` (this replica's own) or `redis` "
          "(shared by every replica on `cache.redis_url`, under `cache.namespace`)", default_text="cache.backend"),
    Field("wait", DURATION, "the longest a request waits for its turn, within its deadline; a turn further off is "
          "answered at once 503 `rate_limited` with `Retry-After`, never sent"),
    Field("replicas", REPLICAS, "replicas sharing the Redis budget: while Redis is down each paces at `rate / "
          "replicas` on its own; `auto`: as many as were seen heartbeating in Redis while it was up (1 before any "
          "was)", default_text="auto"),
    Section("limits", RateLimit, (
        Field("name", LIMIT_NAME, "the budget's name, in metrics and `/upstreams`; routes of an upstream naming the "
              "same limit share its budget (and must declare it alike)", required="a limit needs a 'name'"),
        Field("key", KEY_TEMPLATE, "what requests share a budget: literal text and `{capture}` (of the route's "
              "`match`), `{header.<name>}`, `{body.<field>}` (a dotted field of a JSON body buffered for retries, "
              "up to 64KiB); a missing value is empty; no key: one budget for all", default_text='""'),
        Field("rate", RATE, "the sustained rate: `80/s`, `1/6s`, `1000/min`",
              required="a limit needs a 'rate', e.g. rate: 80/s"),
        Field("burst", count(1), "requests that may go at once after a quiet spell (absent: the rate's count)"),
    ), "each request takes one turn of every limit, all decided at once (one Redis round trip); if one would make "
       "it wait past `wait`, none is taken", many=True),
), "Pacing: requests over their limits wait for their turn (FIFO per key) instead of meeting the provider's own "
   "rate limits; an upstream's applies to its every route (the `default` one too) unless a route sets its own. "
   "A throttle answer (see `throttle`) also holds the request's keys for its delay.",
    frozenset({"upstream", "route"}), check=_unique_limit_names)

# Every key, in the README's order. A level's keys are the nodes that may appear there.
SCHEMA: tuple[Node, ...] = (
    LISTEN, ADMIN, SHUTDOWN_GRACE, LISTENER_LIMITS, DEFAULTS, UPSTREAMS, URL_FIELD, HEADERS_FIELD, ROUTES,
    ROUTE_NAME_FIELD, MATCH_FIELD, IDEMPOTENT, TIMEOUTS, RETRY, BREAKER, LIMITS, THROTTLE, CACHE, REDACT,
    ROUTE_CACHE, HEDGE, RATE_LIMIT,
)
# What a level passes down to the next (defaults -> upstream -> route).
INHERITED: tuple[Section, ...] = tuple(n for n in SCHEMA if isinstance(n, Section) and "defaults" in n.levels)


def default_of(model: type, name: str) -> Any:
    """The model dataclass's default for attribute `name`; FROM_MODEL when it has none."""
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return FROM_MODEL


def keys_at(level: Level) -> tuple[str, ...]:
    return tuple(n.key for n in SCHEMA if level in n.levels)


def at(level: Level, key: str) -> Node:
    return next(n for n in SCHEMA if n.key == key and level in n.levels)


def all_keys() -> frozenset[str]:
    """Every key name the schema knows, at any depth."""

    def walk(nodes: tuple[Node | Field | Section, ...]) -> Iterator[str]:
        for node in nodes:
            yield node.key
            if isinstance(node, Section):
                yield from walk(node.fields)

    return frozenset(walk(SCHEMA))


# -- reading -------------------------------------------------------------------------------------------


def read(node: Field | Section, located: Located, inherited: Any, level: Level) -> Any:
    """The value of `located` for `node`, over `inherited` for a section; raises `Invalid` (the caller reports it at
    the node) and reports what is wrong inside a section at its own key."""
    if isinstance(node, Field):
        return node.kind.read(located)
    if node.many:
        values = (item.read(lambda n: read_section(node, n, None, level)) for item in located.sequence())
        return tuple(v for v in values if v is not None)
    return read_section(node, located, inherited, level)


def read_section(section: Section, node: Located, inherited: Any, level: Level) -> Any:
    """The keys of `node` on top of `inherited` (or on the model's defaults when None). A bad value is reported and
    leaves the key as it was; a section missing a required key, or with one that is bad, is None."""
    entries = node.mapping(section.keys)
    for f in section.fields:
        if isinstance(f, Field) and f.required and f.key not in entries:
            raise Invalid(f.required)
    changes: dict[str, Any] = {}
    complete = True
    for key, child in entries.items():
        f = section.field(key)
        if f.levels and level not in f.levels:
            where = ", ".join(lv for lv in LEVELS if lv in f.levels)
            child.report_at_key(f.elsewhere or f"not a setting of this level (only of: {where})")
            continue
        current = getattr(inherited, f.name) if inherited is not None else None
        try:
            changes[f.name] = read(f, child, current, level)
        except Invalid as exc:
            child.report(str(exc))
            complete = complete and not (isinstance(f, Field) and f.required)
    if inherited is not None:
        value = dataclasses.replace(inherited, **changes)
    elif not complete:
        return None
    else:
        declared = {f.name: f.default for f in section.fields if isinstance(f, Field) and f.default is not FROM_MODEL}
        value = section.model(**{**declared, **changes})
    if section.check is not None:
        section.check(value, inherited, node)
    return value

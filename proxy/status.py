"""The status page: `GET /status` (JSON) and `GET /` (the same, as one HTML page a person reads at a glance).

One report (`report`) and one renderer of it (`render_page`, `render_main`): the page refreshes its main part by
fetching `/?part=main` every `REFRESH_SECONDS` and swapping it in, so it never flashes a full reload, and the
server stays the only renderer. Rendered with the standard library: `html.escape` on every value that reaches the
page (a route, a reason's detail and a request id can carry caller or upstream text), no template engine to pin
for one page. The page loads nothing from elsewhere (it works offline), and its Content-Security-Policy allows only
its own inline script and style, by hash, so even a value that escaped escaping could not run.

Breaker override buttons are drawn only when `admin.token` is set; they ask for the token and send it as
`Authorization: Bearer`, through the same guarded endpoints as curl (`POST /breakers/<name>/<action>`).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from proxy import __version__
from proxy.logs import iso
from proxy.runtime import Runtime, UpstreamState

REFRESH_SECONDS = 2
DETAIL_SHOWN = 240  # characters of an error's detail on the page (all of it in /status)

# Breaker phases (Breaker.phase) and how the page colours them.
PHASE_TONE = {"closed": "ok", "half-open": "warn", "due": "warn", "open": "bad", "forced_open": "bad"}
PHASE_TEXT = {"closed": "closed", "half-open": "half-open (trial)", "due": "open, trial due", "open": "open",
              "forced_open": "forced open by an operator"}


def upstream_report(state: UpstreamState, traffic: dict[str, Any]) -> dict[str, Any]:
    """One upstream: what `/upstreams` shows, each breaker in full, the budget, the observe marks, the traffic."""
    shown = state.snapshot()  # what /upstreams shows, keys and all
    breakers = state.breakers.by_name.values()
    shown["breaker_details"] = [b.snapshot() for b in breakers]  # what /breakers shows
    shown["observe"] = {"breakers": [b.name for b in breakers if b.policy.mode == "observe"],
                        "limits": state.upstream.limits.mode == "observe"}
    budget = state.budget
    shown["retry_budget"] = {"left": round(budget.left(), 1), "allowance": round(budget.allowance(), 1),
                             "window_seconds": budget.window, "ratio": budget.budget.ratio}
    shown["last_minute"] = traffic
    return shown


def report(runtime: Runtime, reload: Mapping[str, Any]) -> dict[str, Any]:
    """Everything `/status` shows; `reload` is `/policy`'s `reload` key (load time, last attempt)."""
    now = time.time()
    runtime.metrics.settle()  # what the ledger holds back reaches the traffic summaries first
    return {
        "version": __version__,
        "generated_at": iso(now),
        "uptime_seconds": round(now - runtime.started, 1),
        "policy": {"source": runtime.policy.source, **reload},
        "token_required": bool(runtime.policy.admin.token),
        "upstreams": {name: upstream_report(state, runtime.traffic.summary(name))
                      for name, state in runtime.upstreams.items()},
    }


def _clock(at: str) -> str:
    """`17:30:20` of an ISO time."""
    return at.partition("T")[2][:8] or at


# -- HTML ---------------------------------------------------------------------------------------------------------

def e(value: object) -> str:
    """Every value on the page goes through here (quotes too: values also land in attributes)."""
    return escape(str(value), quote=True)


def _badge(text: str, tone: str) -> str:
    return f'<span class="badge {tone}">{e(text)}</span>'


def _rows(header: Iterable[str], rows: Iterable[Iterable[object]], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _phase_badge(phase: str) -> str:
    """A breaker phase as the page shows it everywhere: its words, in its colour."""
    return _badge(PHASE_TEXT.get(phase, phase), PHASE_TONE.get(phase, "warn"))


def _gauge(label: str, value: float, limit: float | None) -> str:
    """`in flight 3 / 20` with a meter (amber past 80% of the limit): a native element, so no inline style."""
    if not limit:
        return f'<div class="gauge"><span>{e(label)}</span> <b>{e(value)}</b></div>'
    return (f'<div class="gauge"><span>{e(label)}</span> <b>{e(value)}</b> / {e(limit)}<br>'
            f'<meter min="0" max="{e(limit)}" high="{e(limit * 0.8)}" optimum="0" value="{e(value)}"></meter></div>')


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _breakers(upstream: Mapping[str, Any], buttons: bool) -> str:
    rows = []
    for b in upstream["breaker_details"]:
        phase = b["phase"]
        retry = b["retry_in_seconds"]
        cells = [e(b["name"]), _phase_badge(phase),
                 f'{e(b["consecutive_failures"])} / {e(b["threshold"])}',
                 "-" if retry is None or phase == "closed" else f"{e(retry)} s"]
        if b["name"] in upstream["observe"]["breakers"]:
            cells[1] += " " + _badge("observe only", "observe")
        if buttons:
            cells.append(" ".join(
                f'<button type="button" data-breaker="{e(b["name"])}" data-action="{action}">{action}</button>'
                for action in ("open", "close", "reset")))
        rows.append(cells)
    header = ["breaker", "state", "failures", "retry in", *(["override"] if buttons else [])]
    return _rows(header, rows, "breakers")


def worst_phase(u: Mapping[str, Any]) -> str:
    """The upstream's headline state: its least healthy breaker's phase."""
    phases = [b["phase"] for b in u["breaker_details"]]
    return next((p for p in ("forced_open", "open", "due", "half-open") if p in phases), "closed")


def _overview(upstreams: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per upstream, in the policy's order: the glance before the detail."""
    rows = []
    for name, u in upstreams.items():
        worst, minute = worst_phase(u), u["last_minute"]
        rows.append((f'<a href="#upstream-{e(name)}">{e(name)}</a>', _phase_badge(worst),
                     f'{e(minute["rate_per_second"])}/s', e(_ms(minute["p95_ms"])),
                     f'{minute["error_rate"] * 100:.1f}%', f'{e(u["inflight"])} / {e(u["limits"]["max_concurrent"])}',
                     f'{e(u["queued"])} / {e(u["limits"]["max_queue"])}'))
    return _rows(["upstream", "state", "requests", "p95", "errors", "in flight", "queued"], rows, "overview")


def _upstream_card(name: str, u: Mapping[str, Any], buttons: bool) -> str:
    minute = u["last_minute"]
    worst = worst_phase(u)
    marks = _badge("limits: observe only", "observe") if u["observe"]["limits"] else ""
    errors = ", ".join(f"{e(reason)} {e(count)}" for reason, count in minute["errors"].items()) or "none"
    budget = u["retry_budget"]
    throttle = u["throttled_for_seconds"]
    facts = [
        ("requests", f'{e(minute["rate_per_second"])}/s ({e(minute["requests"])} in {e(minute["window_seconds"])} s)'),
        ("latency", f'p50 {e(_ms(minute["p50_ms"]))}, p95 {e(_ms(minute["p95_ms"]))}'),
        ("error rate", f'{minute["error_rate"] * 100:.1f}%: {errors}'),
        ("retry budget left", f'{e(budget["left"])} of {e(budget["allowance"])} per {e(budget["window_seconds"])} s'),
        ("throttle", _badge(f"throttled for {throttle:.1f} s", "bad") if throttle else "none"),
    ]
    redis = u["rate_limits"].get("redis")
    if redis:
        tone = "ok" if redis["state"] == "up" else "bad"
        facts.append(("pacing store", f'{_badge("redis " + redis["state"], tone)} replicas {e(redis["replicas"])}'))
    facts_html = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    limits = u["limits"]
    cache = minute["cache"]
    cache_html = _rows(["route", "hit ratio", "served from cache", "lookups"], (
        (e(route), f'{c["hit_ratio"] * 100:.0f}%', e(c["served"]), e(c["lookups"])) for route, c in cache.items()
    ), "cache") if cache else "<p class=\"quiet\">no cache lookups in the last minute</p>"
    last = minute["last_errors"]
    errors_html = _rows(["time (UTC)", "reason", "route", "status", "request id", "detail"], (
        (e(_clock(x["at"])), e(x["reason"]), e(x["route"]), e(x["status"]), f'<code>{e(x["request_id"])}</code>',
         e(_shorten(x["detail"]))) for x in last
    ), "errors") if last else "<p class=\"quiet\">no errors in the last minute</p>"
    return (
        f'<section class="upstream {PHASE_TONE[worst]}" id="upstream-{e(name)}" data-phase="{e(worst)}">'
        f'<h2>{e(name)} {_phase_badge(worst)} {marks}</h2>'
        f'<div class="gauges">{_gauge("in flight", u["inflight"], limits["max_concurrent"])}'
        f'{_gauge("queued", u["queued"], limits["max_queue"])}</div>'
        f'{_breakers(u, buttons)}<dl>{facts_html}</dl>{_pacing(u["rate_limits"])}'
        f'<h3>Cache, last minute</h3>{cache_html}<h3>Last errors</h3>{errors_html}</section>'
    )


def _pacing(rate_limits: Mapping[str, Any]) -> str:
    """Each send-pacing limit and the keys closest to their turn running out (fewest tokens first)."""
    limits = rate_limits.get("limits") or {}
    if not limits:
        return ""
    rows = ((e(name), e(limit["rate"]), e(limit["burst"]), f'<code>{e(limit["key"])}</code>', e(limit["backend"]),
             e(", ".join(limit["routes"])),
             e(", ".join(f"{key or '(empty)'}: {left}" for key, left in limit["tokens"].items()) or "full"))
            for name, limit in limits.items())
    return "<h3>Pacing</h3>" + _rows(["limit", "rate", "burst", "key", "backend", "routes", "tokens left"], rows,
                                     "pacing")


def _shorten(text: str) -> str:
    return text if len(text) <= DETAIL_SHOWN else text[:DETAIL_SHOWN] + "…"


def _reload(policy: Mapping[str, Any]) -> str:
    last = policy.get("last_attempt")
    if last is None:
        attempt = "no reload since start"
    else:
        tone = "ok" if last["result"] == "applied" else "bad"
        attempt = f'{_badge(last["result"], tone)} at {e(last["at"])}'
        problems = [*last["problems"], *last["notes"]]
        if problems:
            attempt += "<ul>" + "".join(f"<li><code>{e(p)}</code></li>" for p in problems) + "</ul>"
    return (f'<dl class="policy"><dt>policy</dt><dd><code>{e(policy["source"])}</code></dd>'
            f'<dt>loaded</dt><dd>{e(policy["policy_loaded_at"])}</dd><dt>last reload</dt><dd>{attempt}</dd></dl>')


def render_main(status: Mapping[str, Any]) -> str:
    """The part of the page that refreshes."""
    buttons = bool(status["token_required"])
    cards = "".join(_upstream_card(name, u, buttons) for name, u in status["upstreams"].items())
    return (f'<p class="quiet">as of {e(status["generated_at"])}, up {e(status["uptime_seconds"])} s, '
            f'version {e(status["version"])}</p>{_reload(status["policy"])}{_overview(status["upstreams"])}'
            f'<div class="cards">{cards}</div>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#f6f8fa}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:17px;margin:0 0 .5em}h3{font-size:14px;margin:1em 0 .3em}
section.upstream{background:#fff;border:1px solid #d0d7de;border-left:6px solid #2da44e;border-radius:6px;
padding:1em}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(34em,1fr));gap:1em;margin-top:1em}section.upstream.warn{border-left-color:#bf8700}section.upstream.bad{border-left-color:#cf222e}
.badge{display:inline-block;padding:0 .5em;border-radius:1em;font-size:12px;font-weight:600;color:#fff}
.badge.ok{background:#2da44e}.badge.warn{background:#bf8700}.badge.bad{background:#cf222e}
.badge.observe{background:#8250df}
table{border-collapse:collapse;margin:.3em 0}td,th{border-bottom:1px solid #eaeef2;padding:.2em .8em .2em 0;
text-align:left;vertical-align:top}dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.5em 0}
dt{color:#57606a}dd{margin:0}.gauges{display:flex;gap:2em}.gauge{min-width:12em}
meter{width:12em}table.errors{width:100%;font-size:12px}table.errors td{white-space:nowrap}
table.errors td:nth-child(n+5){white-space:normal;overflow-wrap:anywhere}
section.upstream{min-width:0}.quiet{color:#57606a}code{font-size:12px}#note{min-height:1.4em}
"""

SCRIPT = """
const main = document.getElementById("main"), note = document.getElementById("note");
let shown = "";  // the last part fetched (the browser's own serialisation of main differs from it)
function problem(text) { note.textContent = text; note.dataset.problem = "1"; }
async function refresh() {
  try {
    const r = await fetch("?part=main", {cache: "no-store"});  // relative: works behind a path prefix too
    if (!r.ok) { problem("the status answered " + r.status); return; }
    const html = await r.text();
    if (note.dataset.problem) { note.textContent = ""; delete note.dataset.problem; }
    if (html !== shown) { main.innerHTML = html; shown = html; }
  } catch (err) { problem("the sidecar did not answer: " + err); }
}
async function loop() { await refresh(); setTimeout(loop, REFRESH_MS); }  // one refresh at a time, in order
setTimeout(loop, REFRESH_MS);
document.addEventListener("click", async (event) => {
  const b = event.target.closest("button[data-breaker]");
  if (!b) return;
  const token = document.getElementById("token").value;
  const what = b.dataset.action + " " + b.dataset.breaker;
  if (!token) { note.textContent = "enter the admin token first"; return; }
  try {
    const path = "breakers/" + encodeURIComponent(b.dataset.breaker) + "/" + b.dataset.action;
    const r = await fetch(path, {method: "POST", headers: {"Authorization": "Bearer " + token}});
    note.textContent = what + ": " + r.status + (r.ok ? "" : " " + await r.text());
  } catch (err) { note.textContent = what + " failed: " + err; }
  refresh();
});
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own script and style run, nothing from elsewhere, and no other page may frame it (the override
# buttons must not be clickjacked).
CSP = (f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
       "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Referrer-Policy": "no-referrer"}


def render_page(status: Mapping[str, Any]) -> str:
    token = ('<p><label>admin token <input type="password" id="token" autocomplete="off"></label> '
             "(breaker overrides need it)</p>") if status["token_required"] else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>egress sidecar status</title>'
        f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style>'
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript></head>'
        f'<body><h1>egress sidecar</h1>{token}<p id="note" role="status"></p>'
        f'<main id="main">{render_main(status)}</main><script>{SCRIPT}</script></body></html>'
    )

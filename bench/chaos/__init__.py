"""`python -m bench.chaos`: the inbox with and without the sidecar, under the same faults and the same traffic.

Per mode (legacy, direct, sidecar) it starts the simulator, the sidecar (sidecar mode only) and the backend as
processes on free ports, injects a fixed fault scenario through the simulator's control port, drives a seeded
open-loop mix of inbox traffic, then counts what the customers saw (5xx, latency from the intended send time) and
what the upstreams saw (duplicate sends, lost inbound messages, double or missing bot replies, amplification).
The report (summary.json, report.md, PNG plots) goes to bench/results/chaos-<time>/ or --out DIR.
"""

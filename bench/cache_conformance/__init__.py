"""The public HTTP caching test suite run through the sidecar's cache, a pass-through and nginx's proxy_cache.

`python -m bench.cache_conformance --suite DIR [--out DIR] [--targets NAME,...]`; `--summarize OUT_DIR` re-reads a
run's saved results. DIR is a checkout of github.com/http-tests/cache-tests with its node dependencies
(`npm install --omit=dev`). See docs/caching.md.
"""

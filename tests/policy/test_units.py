"""Human units: durations need a unit (a bare number is ambiguous), sizes take binary/decimal suffixes or bytes."""

from __future__ import annotations

import pytest

from proxy.policy.units import format_duration, parse_duration, parse_size
from tests.policy._helpers import load, problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("150ms", 0.15),
        ("3s", 3.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5m", 90.0),
        ("0s", 0.0),
        (" 15s ", 15.0),
        ("2 s", 2.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["15", "0", "1.5", "fast", "", "s", "-1s", "3sec", "3S", "1d", "1h30m", "ms150"])
def test_bad_durations_are_refused_bare_numbers_included(text):
    with pytest.raises(ValueError, match=r"expected a duration like '15s' or '150ms', got"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        ("10MB", 10_000_000),
        ("1KB", 1000),
        ("1GB", 10**9),
        ("100B", 100),
        ("1.5KiB", 1536),
        ("4096", 4096),
        (" 1MiB ", 1024 * 1024),
        (0, 0),
        (1024, 1024),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "", "1 MiBs", "1mib", "1TB", "-1", "KiB", -1])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match=r"expected a size like '1MiB'"):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.15, "150ms"), (3.0, "3s"), (300.0, "300s"), (0.0, "0s"), (1.5, "1.5s"), (0.05, "50ms")],
)
def test_durations_are_rendered_back_in_units(seconds, text):
    assert format_duration(seconds) == text


def test_units_in_the_policy_file():
    policy = load(
        """
        defaults:
          timeouts: {connect: 150ms, read: 1h, total: 5m}
          retry: {max_body: 512KiB}
        cache: {max_bytes: 1MiB, max_body: 4096}
        upstreams:
          g: {url: "https://g.example"}
        """
    )
    route = policy.upstreams["g"].default_route
    assert (route.timeouts.connect, route.timeouts.read, route.timeouts.total) == (0.15, 3600.0, 300.0)
    assert route.retry.max_body == 512 * 1024
    assert policy.cache.max_bytes == 1024 * 1024
    assert policy.cache.max_body == 4096


def test_a_bare_number_for_a_duration_is_an_error_at_its_line():
    text = """\
    defaults:
      timeouts:
        connect: 3
    """
    assert problem(text) == (
        "policy.yaml:3: defaults.timeouts.connect: expected a duration like '15s' or '150ms', got '3'"
    )


def test_a_bad_size_is_an_error_at_its_line():
    text = """\
    cache:
      max_entries: 10
      max_bytes: huge
    """
    assert problem(text) == "policy.yaml:3: cache.max_bytes: expected a size like '1MiB' or '512KiB', got 'huge'"

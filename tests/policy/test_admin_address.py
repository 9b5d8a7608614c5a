"""Which admin addresses are loopback (by address, not spelling), and what the loader refuses beyond it."""

from __future__ import annotations

import pytest

from proxy.policy import Address
from tests.policy._helpers import load, problem


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1", "0:0:0:0:0:0:0:1", "0000:0000::0001", "::ffff:127.0.0.1",
     "::FFFF:127.9.9.9", "[::1]", "localhost", "LocalHost", "localhost.", "api.localhost"],
)
def test_every_loopback_form_is_loopback(host):
    assert Address(host, 9901).is_loopback


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", "128.0.0.1", "127.evil.example", "127.0.0.1.nip.io",
     "localhost.evil.example", "example.com", "fe80::1"],
)
def test_other_addresses_and_names_are_not_loopback(host):
    assert not Address(host, 9901).is_loopback


def test_loopback_written_out_needs_no_token():
    policy = load("admin: '[0:0:0:0:0:0:0:1]:9901'\n")
    assert policy.admin.listen.is_loopback and policy.admin.token is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("admin: 0.0.0.0:9000\n", "0.0.0.0:9000"),
        ("admin: {listen: '[::]:9000'}\n", "[::]:9000"),
        ("admin: {listen: 127.evil.example:9000, token: ''}\n", "127.evil.example:9000"),
        ("admin:\n  listen: ${ADMIN}\n  token: ${ADMIN_TOKEN:-}\n", "10.0.0.7:9901"),
    ],
)
def test_admin_beyond_loopback_without_a_token_is_a_policy_error(text, shown):
    assert problem(text, {"ADMIN": "10.0.0.7:9901"}) == (
        f"policy.yaml:1: admin: {shown} is reachable beyond this host: set admin.token (mutating endpoints then "
        "need it) or listen on a loopback address"
    )


def test_admin_beyond_loopback_with_a_token_is_accepted():
    policy = load("admin: {listen: 0.0.0.0:9000, token: t}\n")
    assert not policy.admin.listen.is_loopback and policy.admin.token == "t"

"""Secret query values are hidden however the query is spelled: a broad default list of names, the policy's
`redact.query` additions, `&` and `;` separators, names percent-encoded, in any case, or inside brackets."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from proxy.logs import redact_target
from proxy.policy.model import SECRET_QUERY_NAMES
from proxy.policy.render import REDACTED, effective_policy, is_secret_name, redact_query, redact_url
from tests.policy._helpers import load, problem

# Named in the issue: each was logged in clear before.
ISSUE_NAMES = (
    "refresh_token", "client_secret", "id_token", "jwt", "sig", "signature", "code", "X-Amz-Signature",
    "X-Amz-Credential", "X-Goog-Signature", "password", "passwd", "secret", "token", "access_token", "api_key",
    "apikey", "key", "auth", "session",
)


def test_every_name_the_issue_lists_is_redacted_by_default():
    for name in ISSUE_NAMES:
        assert redact_query(f"a=1&{name}=s3cr3t&b=2") == f"a=1&{name}={REDACTED}&b=2", name


def test_a_semicolon_separates_too():
    assert redact_query("a=1;token=s1;b=2&sig=s2") == f"a=1;token={REDACTED}&sig={REDACTED}"


def test_a_secret_value_is_hidden_up_to_the_next_ampersand():
    """A server that does not split on `;` reads `s1;rest` as the value: none of it may show."""
    assert redact_query("code=s1;rest&x=1") == f"code={REDACTED}&x=1"


def test_names_are_compared_decoded_in_any_case_and_inside_brackets():
    assert redact_query("X-AMZ-SIGNATURE=s1&%70assword=s2&%2570asswd=s3&user[password]=s4&auth%5B%5D=s5") == (
        f"X-AMZ-SIGNATURE={REDACTED}&%70assword={REDACTED}&%2570asswd={REDACTED}&user[password]={REDACTED}"
        f"&auth%5B%5D={REDACTED}"
    )


def test_other_parameters_are_left_byte_for_byte():
    query = "a=1&b=%20x;c=3&flag&monkey=m&keys=k&tokens=t"
    assert redact_query(query) == query


def test_the_policy_adds_names_to_the_defaults():
    policy = load("redact:\n  query: [Tenant_Secret, x-custom-sig]\n")
    assert {"tenant_secret", "x-custom-sig"} <= policy.redact.query
    assert policy.redact.query >= SECRET_QUERY_NAMES  # additions never shorten the default list
    assert redact_target("/p", "TENANT_SECRET=s1&x-custom-sig=s2&key=s3", policy.redact.query) == (
        f"/p?TENANT_SECRET={REDACTED}&x-custom-sig={REDACTED}&key={REDACTED}"
    )
    assert "tenant_secret" in effective_policy(policy)["redact"]["query"]
    assert "tenant_secret" not in load("upstreams: {}\n").redact.query


def test_a_bad_redact_section_is_a_policy_error():
    assert problem("redact: {query: ['']}\n") == (
        "policy.yaml:1: redact.query[0]: expected a query parameter name, got an empty one"
    )
    assert problem("redact: {quer: [a]}\n").startswith("policy.yaml:1: redact.quer: unknown key")


def test_redact_url_hides_user_info_and_secret_query_values():
    assert redact_url("redis://u:pw@h:6379/0?password=pw2") == f"redis://{REDACTED}@h:6379/0?password={REDACTED}"


# -- property: whatever the spelling, the value never shows ---------------------------------------------

_plain = st.text(string.ascii_lowercase + string.digits + "_", min_size=1, max_size=8).filter(
    lambda name: not is_secret_name(name, SECRET_QUERY_NAMES)
)
_plain_pair = st.one_of(st.builds("{}={}".format, _plain, st.text(string.ascii_lowercase + string.digits, max_size=8)),
                        _plain)  # a bare flag too


@st.composite
def _spelled(draw: st.DrawFn, name: str) -> str:
    """`name` as a caller may write it: each character as is, in another case, or percent-encoded."""
    out = []
    for char in name:
        how = draw(st.sampled_from(("same", "upper", "lower", "encoded", "encoded-lower")))
        if how == "upper":
            out.append(char.upper())
        elif how == "lower":
            out.append(char.lower())
        elif how.startswith("encoded"):
            code = f"%{ord(char):02X}"
            out.append(code.lower() if how == "encoded-lower" else code)
        else:
            out.append(char)
    spelled = "".join(out)
    return draw(st.sampled_from((spelled, f"user[{spelled}]", f"{spelled}[]")))


# A value as it is written in a query: anything, percent-encoded, with `;`, `=`, `/` left raw (no raw `&`,
# which would end it for every server). `S3` marks it: nothing else in the generated query has an upper-case S.
_secret_value = st.builds(
    lambda text: "S3" + text,
    st.text(string.ascii_letters + string.digits + "-._~;=/:+%", max_size=16),
)


@given(
    before=st.lists(_plain_pair, max_size=4),
    after=st.lists(_plain_pair, max_size=4),
    name=st.sampled_from(sorted(SECRET_QUERY_NAMES)).flatmap(_spelled),
    value=_secret_value,
    separators=st.lists(st.sampled_from("&;"), min_size=9, max_size=9),
)
def test_a_secret_value_never_survives_redaction(before, after, name, value, separators):
    pairs = [*before, f"{name}={value}", *after]
    query = pairs[0] + "".join(sep + pair for sep, pair in zip(separators, pairs[1:], strict=False))
    redacted = redact_query(query)
    assert value not in redacted, (query, redacted)
    assert REDACTED in redacted

"""Access control building blocks without a server: key parsing and lookup, key-file reload,
token buckets, client address behind proxies, policy decisions, zero cost when off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from darkpose.service.api.access import (
    AccessConfigError,
    AccessMiddleware,
    AccessPolicy,
    KeyStore,
    TokenBuckets,
    client_ip,
    is_loopback,
    key_id,
    parse_key_file,
    parse_key_list,
    parse_networks,
    presented_keys,
    warn_if_open,
)
from tests.api.conftest import api_settings


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


_KEY = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


# --- parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("# only a comment\n\n   \n", []),
        ("alpha\nbeta\n", ["alpha", "beta"]),
        ("  alpha  \r\n\tbeta\t\n", ["alpha", "beta"]),
        ("alpha   # alice's key\nbeta\t# bob\n", ["alpha", "beta"]),
        ("#disabled-key\nalpha", ["alpha"]),
        ("a#b\n", ["a#b"]),
    ],
)
def test_key_file_lines(text: str, expected: list[str]) -> None:
    assert parse_key_file(text) == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("alpha\nsecret-one secret-two\n", 2),
        ("ok\n\nsecret-three\tsecret-four # comment\n", 3),
        ("caf\u00e9-key\n", 1),
    ],
)
def test_key_file_errors_name_the_line_not_the_key(text: str, line: int) -> None:
    with pytest.raises(AccessConfigError) as info:
        parse_key_file(text, "keys.txt")
    msg = info.value.message
    assert f"keys.txt line {line}: expected" in msg
    for word in ("secret", "caf\u00e9"):
        assert word not in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", []), ("a", ["a"]), (" a , b ,,c ", ["a", "b", "c"]), (",", [])],
)
def test_key_list(text: str, expected: list[str]) -> None:
    assert parse_key_list(text) == expected


def test_key_id_is_a_short_hash_prefix() -> None:
    kid = key_id("correct-horse-battery-staple")
    assert kid.startswith("k-") and len(kid) == 10
    assert "horse" not in kid
    assert kid == key_id(b"correct-horse-battery-staple") != key_id("correct-horse-battery-stapl")


# --- lookup ---------------------------------------------------------------------------------
@given(keys=st.lists(_KEY, min_size=1, max_size=8, unique=True), other=_KEY)
@settings(max_examples=60, deadline=None)
def test_lookup_finds_exactly_the_configured_keys(keys: list[str], other: str) -> None:
    store = KeyStore(keys)
    for k in keys:
        assert store.lookup(k.encode()) == key_id(k)
    assert store.lookup(other.encode()) == (key_id(other) if other in keys else None)
    assert store.lookup(b"") is None


def test_key_file_reloads_on_change_only_after_the_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nold-key-0001\n")
    clock = FakeClock()
    store = KeyStore(["inline-key"], path, clock=clock, check_interval=1.0)
    assert store.lookup(b"old-key-0001") == key_id("old-key-0001")
    tmp = tmp_path / "keys.new"
    tmp.write_text("new-key-00002 # rotated\n")
    os.replace(tmp, path)
    store.maybe_reload()  # within the interval: not even a stat
    assert store.lookup(b"new-key-00002") is None
    clock.t += 1.0
    store.maybe_reload()
    assert store.lookup(b"new-key-00002") == key_id("new-key-00002")
    assert store.lookup(b"old-key-0001") is None
    assert store.lookup(b"inline-key") == key_id("inline-key")  # inline keys stay
    assert store.reload_count == 1


def test_a_broken_key_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("good-key-1\n")
    store = KeyStore([], path)
    path.write_text("two words-here\n")
    assert store.reload("SIGHUP") is False
    assert store.lookup(b"good-key-1") == key_id("good-key-1")
    path.unlink()
    assert store.reload("SIGHUP") is False
    assert len(store) == 1


@pytest.mark.parametrize("content", [None, "", "# nobody yet\n"])
def test_a_key_file_fails_closed(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "keys"
    if content is None:  # missing at start: refuse to start
        with pytest.raises(AccessConfigError, match="expected a readable file"):
            KeyStore([], path)
        return
    path.write_text(content)
    store = KeyStore([], path)
    assert store.enabled and len(store) == 0
    assert store.lookup(b"") is None and store.lookup(b"anything") is None


# --- token buckets --------------------------------------------------------------------------
@given(
    rate=st.floats(0.1, 50.0),
    burst=st.integers(1, 20),
    steps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=60),
)
@settings(max_examples=80, deadline=None)
def test_token_bucket_never_admits_more_than_burst_plus_refill(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate, burst, clock=clock)
    admitted = 0
    for dt in steps:
        clock.t += dt
        wait = buckets.wait_time("c")
        if wait == 0.0:
            buckets.take("c")
            admitted += 1
        else:  # the promised wait is exactly enough
            clock.t += wait
            assert buckets.wait_time("c") == pytest.approx(0.0, abs=1e-9)
            clock.t -= wait
    assert admitted <= burst + rate * sum(steps) + 1e-6


def test_token_buckets_are_per_client_and_bounded() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(1.0, 2, clock=clock, max_clients=3)
    for _ in range(2):
        buckets.take("a")
    assert buckets.wait_time("a") == pytest.approx(1.0)
    assert buckets.wait_time("b") == 0.0
    for c in ("b", "c", "d"):
        buckets.take(c)
    assert len(buckets) == 3  # "a" (least recently seen) forgotten


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 3), (1.0, 0)])
def test_token_bucket_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(AccessConfigError, match="expected rate > 0 and burst >= 1"):
        TokenBuckets(rate, burst)


# --- client address -------------------------------------------------------------------------
_PROXIES = parse_networks("10.0.0.0/8, ::1")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),  # spoofed left part ignored
        ("10.0.0.2", ["198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # chain of trusted proxies
        ("10.0.0.2", ["198.51.100.1", "10.0.0.7"], "198.51.100.1"),  # several header lines
        ("10.0.0.2", ["10.1.1.1, 10.0.0.7"], "10.1.1.1"),  # all trusted: leftmost
        ("10.0.0.2", ["junk, 10.0.0.7"], "10.0.0.7"),  # unparseable: last trusted hop
        ("10.0.0.2", ["198.51.100.1:4711"], "198.51.100.1"),
        ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::1", ["2001:db8::2"], "2001:db8::2"),
        ("::ffff:10.0.0.2", ["198.51.100.9"], "198.51.100.9"),  # v4-mapped peer
    ],
)
def test_client_ip_behind_proxies(peer: str, xff: list[str], expected: str) -> None:
    assert client_ip(peer, xff, _PROXIES) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert client_ip("127.0.0.1", ["198.51.100.1"], []) == "127.0.0.1"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.local", "1.2.3"])
def test_trusted_proxies_must_be_addresses(bad: str) -> None:
    with pytest.raises(AccessConfigError, match="expected IP addresses or CIDR networks"):
        parse_networks(f"127.0.0.1,{bad}")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("pose.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- headers and policy ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], []),
        ([(b"authorization", b"Bearer abc")], [b"abc"]),
        ([(b"authorization", b"bearer   abc ")], [b"abc"]),
        ([(b"authorization", b"Basic dXNlcjpwdw==")], []),
        ([(b"authorization", b"Bearer ")], []),
        ([(b"x-api-key", b"xyz")], [b"xyz"]),
        ([(b"authorization", b"Bearer abc"), (b"x-api-key", b"xyz")], [b"abc", b"xyz"]),
    ],
)
def test_presented_keys(headers: list[tuple[bytes, bytes]], expected: list[bytes]) -> None:
    assert presented_keys({"type": "http", "headers": headers}) == expected


def test_concurrency_cap_refuses_without_spending_tokens() -> None:
    clock = FakeClock()
    policy = AccessPolicy(
        keys=KeyStore(),
        buckets=TokenBuckets(1.0, 3, clock=clock),
        max_inflight_per_client=2,
        retry_after_s=2.0,
    )
    assert policy.admit("a") is None and policy.admit("a") is None
    assert policy.admit("a") == ("concurrency", 2.0)
    assert policy.admit("b") is None  # another client is unaffected
    policy.release("a")
    assert policy.inflight("a") == 1
    assert policy.admit("a") is None  # the third token: the refusal spent none
    policy.release("a")
    policy.release("a")
    reason, wait = policy.admit("a") or ("", 0.0)
    assert reason == "rate" and wait == pytest.approx(1.0)
    assert policy.inflight("a") == 0


def test_metrics_key_is_separate_from_api_keys() -> None:
    policy = AccessPolicy(keys=KeyStore(["api-key-1"]), metrics_key="metrics-key-1")
    assert policy.metrics_allowed([b"api-key-1"]) is False
    assert policy.metrics_allowed([]) is False
    assert policy.metrics_allowed([b"metrics-key-1"]) is True
    assert AccessPolicy(keys=KeyStore(["api-key-1"])).metrics_allowed([]) is None


# --- settings → app -------------------------------------------------------------------------
def test_nothing_configured_adds_no_middleware() -> None:
    from darkpose.service.api import create_app

    app = create_app(api_settings(warmup=False))
    assert AccessMiddleware not in [m.cls for m in app.user_middleware]
    assert AccessPolicy.from_settings(api_settings()) is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"api_keys": SecretStr("k1")},
        {"metrics_key": SecretStr("m1")},
        {"rate_limit": 2.0},
        {"max_inflight_per_client": 4},
    ],
)
def test_any_setting_turns_the_middleware_on(overrides: dict[str, object]) -> None:
    from darkpose.service.api import create_app

    app = create_app(api_settings(warmup=False, **overrides))
    assert [m.cls for m in app.user_middleware].count(AccessMiddleware) == 1


def test_settings_keep_keys_out_of_their_repr() -> None:
    s = api_settings(api_keys=SecretStr("very-secret-1,very-secret-2"), metrics_key="m-secret")
    assert "very-secret" not in repr(s) and "m-secret" not in repr(s)
    policy = AccessPolicy.from_settings(s)
    assert policy is not None
    assert policy.keys.ids == sorted([key_id("very-secret-1"), key_id("very-secret-2")])
    assert "very-secret" not in policy.describe() and key_id("very-secret-1") in policy.describe()
    assert policy.buckets is None and policy.max_inflight == 0


def test_short_keys_are_accepted_with_a_warning_naming_their_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="darkpose.service.api.access_control"):
        store = KeyStore(["short-key", "a-long-enough-random-key-0123"])
    assert store.lookup(b"short-key") == key_id("short-key")
    # not on darkpose.service.api.access: that logger carries the per-request lines
    assert {r.name for r in caplog.records} == {"darkpose.service.api.access_control"}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and key_id("short-key") in warned[0]
    assert "short-key" not in warned[0] and key_id("a-long-enough-random-key-0123") not in warned[0]


@pytest.mark.parametrize(
    ("overrides", "security", "codes"),
    [
        ({}, False, set()),
        ({"api_keys": SecretStr("k" * 20)}, True, {"401"}),
        ({"max_inflight_per_client": 2}, False, {"429"}),
        ({"api_keys": SecretStr("k" * 20), "rate_limit": 1.0}, True, {"401", "429"}),
    ],
)
def test_openapi_documents_keys_and_limits(
    overrides: dict[str, object], security: bool, codes: set[str]
) -> None:
    from darkpose.service.api import create_app

    schema = create_app(api_settings(warmup=False, **overrides)).openapi()
    schemes = schema.get("components", {}).get("securitySchemes", {})
    assert ("bearerKey" in schemes and "apiKeyHeader" in schemes) is security
    for path, method in (("/pose", "post"), ("/v1/models", "get")):
        op = schema["paths"][path][method]
        assert ("security" in op) is security
        assert codes <= set(op["responses"]) and not ({"401", "429"} - codes) & set(op["responses"])
        for code in codes:
            ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")
    for path in ("/healthz", "/readyz", "/metrics"):
        op = schema["paths"][path]["get"]
        assert "security" not in op and not {"401", "429"} & set(op["responses"])


@pytest.mark.parametrize(
    ("host", "overrides", "warns"),
    [
        ("0.0.0.0", {}, True),
        ("0.0.0.0", {"api_keys": SecretStr(" , ")}, True),  # no key at all: open
        ("0.0.0.0", {"api_keys": SecretStr("k-0123456789abcdef")}, False),
        ("127.0.0.1", {}, False),
    ],
)
def test_warns_when_listening_beyond_loopback_without_keys(
    host: str, overrides: dict[str, object], warns: bool
) -> None:
    s = api_settings(**overrides)
    assert warn_if_open(s, host) is warns
    if not is_loopback(host):  # the warning and the middleware agree on "no keys"
        policy = AccessPolicy.from_settings(s)
        assert (policy is not None and policy.keys.enabled) is not warns

"""Access control building blocks without a server: key parsing and lookup, key-file reload,
token buckets, client address behind proxies, policy decisions, zero cost when off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import Request
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from darkpose.service.api.access_control import (
    AccessConfigError,
    AccessMiddleware,
    AccessPolicy,
    KeyStore,
    TokenBuckets,
    is_loopback,
    key_id,
    parse_key_file,
    parse_key_list,
    presented_keys,
    warn_if_open,
)
from darkpose.service.api.access_control.clients import trusted_hosts
from tests.api.conftest import api_settings


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


_KEY = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16)
SECRET = b"key-id-secret-of-these-tests"


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


def test_key_id_is_a_keyed_hash_prefix() -> None:
    kid = key_id("correct-horse-battery-staple", SECRET)
    assert kid.startswith("k-") and len(kid) == 10
    assert "horse" not in kid
    assert kid == key_id(b"correct-horse-battery-staple", SECRET)
    assert kid != key_id("correct-horse-battery-stapl", SECRET)
    # without the deployment's secret the id says nothing about the key (no offline oracle)
    assert kid != key_id("correct-horse-battery-staple", b"another-secret")


# --- lookup ---------------------------------------------------------------------------------
@given(keys=st.lists(_KEY, min_size=1, max_size=8, unique=True), other=_KEY)
@settings(max_examples=60, deadline=None)
def test_lookup_finds_exactly_the_configured_keys(keys: list[str], other: str) -> None:
    store = KeyStore(keys, secret=SECRET)
    for k in keys:
        assert store.lookup(k.encode()) == key_id(k, SECRET) == store.key_id(k)
    assert store.lookup(other.encode()) == (key_id(other, SECRET) if other in keys else None)
    assert store.lookup(b"") is None


def test_key_file_reloads_on_change_only_after_the_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nold-key-0001\n")
    clock = FakeClock()
    store = KeyStore(
        ["inline-key"], path, clock=clock, check_interval=1.0, allow_short=True, secret=SECRET
    )
    assert store.lookup(b"old-key-0001") == key_id("old-key-0001", SECRET)
    tmp = tmp_path / "keys.new"
    tmp.write_text("new-key-00002 # rotated\n")
    os.replace(tmp, path)
    store.maybe_reload()  # within the interval: not even a stat
    assert store.lookup(b"new-key-00002") is None
    clock.t += 1.0
    store.maybe_reload()
    assert store.lookup(b"new-key-00002") == key_id("new-key-00002", SECRET)
    assert store.lookup(b"old-key-0001") is None
    assert store.lookup(b"inline-key") == key_id("inline-key", SECRET)  # inline keys stay
    assert store.reload_count == 1


def test_a_broken_key_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("good-key-0123456789\n")
    store = KeyStore([], path)
    path.write_text("two words-here\n")
    assert store.reload("SIGHUP") is False
    assert store.lookup(b"good-key-0123456789") == store.key_id("good-key-0123456789")
    path.write_text("short-key\n")  # under 16 characters: refused, the keys stay
    assert store.reload("SIGHUP") is False
    assert store.lookup(b"good-key-0123456789") is not None
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
_PROXIES = ["10.0.0.0/8", "::1"]


def _client_seen(peer: str, xff: list[str], proxies: list[str]) -> str:
    """The client id the access middleware admits behind the app's proxy middleware."""
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app

    app = create_app(
        api_settings(warmup=False, trusted_proxies=",".join(proxies), max_inflight_per_client=9)
    )

    def whoami(request: Request) -> str:
        return str(request.state.client_id)

    app.add_api_route("/whoami", whoami)
    with TestClient(app, client=(peer, 5000)) as c:
        r = c.get("/whoami", headers=[("X-Forwarded-For", v) for v in xff])
    assert r.status_code == 200, r.text
    return str(r.json())


@pytest.mark.slow
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
        ("10.0.0.2", ["198.51.100.1:4711"], "198.51.100.1"),
        ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::1", ["2001:db8::2"], "2001:db8::2"),
        ("::ffff:10.0.0.2", ["198.51.100.9"], "198.51.100.9"),  # v4-mapped peer
    ],
)
def test_client_address_behind_proxies(peer: str, xff: list[str], expected: str) -> None:
    assert _client_seen(peer, xff, _PROXIES) == expected


def test_trusted_ipv4_networks_are_trusted_in_their_mapped_form() -> None:
    import ipaddress

    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")]
    assert trusted_hosts(nets) == ["10.0.0.0/8", "::ffff:a00:0/104", "::1/128"]


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.local", "1.2.3"])
def test_trusted_proxies_must_be_addresses(bad: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="addresses or CIDR networks"):
        api_settings(trusted_proxies=f"127.0.0.1,{bad}")


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
        ([(b"x-api-key", b"a")] * 20_000, [b"a", b"a"]),  # the scan stops at the second
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
    assert policy.inflight["a"] == 1
    assert policy.admit("a") is None  # the third token: the refusal spent none
    policy.release("a")
    policy.release("a")
    reason, wait = policy.admit("a") or ("", 0.0)
    assert reason == "rate" and wait == pytest.approx(1.0)
    assert policy.inflight["a"] == 0


def test_metrics_key_is_separate_from_api_keys() -> None:
    store = KeyStore(["api-key-0123456789"])
    policy = AccessPolicy(keys=store, metrics_key="metrics-key-0123456789")
    assert policy.metrics_allowed(b"api-key-0123456789") is False
    assert policy.metrics_allowed(None) is False
    assert policy.metrics_allowed(b"metrics-key-0123456789") is True
    assert AccessPolicy(keys=store).metrics_allowed(None) is None


# --- settings → app -------------------------------------------------------------------------
def test_nothing_configured_adds_no_middleware() -> None:
    from darkpose.service.api import create_app

    app = create_app(api_settings(warmup=False))
    assert AccessMiddleware not in [m.cls for m in app.user_middleware]
    assert AccessPolicy.from_settings(api_settings()) is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"api_keys": SecretStr("k1-0123456789abcdef")},
        {"metrics_key": SecretStr("m1-0123456789abcdef")},
        {"rate_limit": 2.0},
        {"max_inflight_per_client": 4},
    ],
)
def test_any_setting_turns_the_middleware_on(overrides: dict[str, object]) -> None:
    from darkpose.service.api import create_app

    app = create_app(api_settings(warmup=False, **overrides))
    assert [m.cls for m in app.user_middleware].count(AccessMiddleware) == 1


def test_settings_keep_keys_out_of_their_repr() -> None:
    s = api_settings(
        api_keys=SecretStr("very-secret-0001,very-secret-0002"),
        metrics_key="m-secret-0123456789",
        key_id_secret=SecretStr("shared-between-replicas"),
    )
    assert "very-secret" not in repr(s) and "m-secret" not in repr(s)
    assert "shared-between" not in repr(s)
    policy = AccessPolicy.from_settings(s)
    assert policy is not None
    secret = b"shared-between-replicas"  # the same ids in every replica
    ids = [key_id("very-secret-0001", secret), key_id("very-secret-0002", secret)]
    assert policy.keys.ids == sorted(ids)
    assert "very-secret" not in policy.describe() and ids[0] in policy.describe()
    assert policy.buckets is None and policy.max_inflight == 0


def test_short_keys_are_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AccessConfigError, match="expected at least 16 characters") as info:
        KeyStore(["short-key", "a-long-enough-random-key-0123"], secret=SECRET)
    assert "short-key" not in info.value.message and key_id("short-key", SECRET) in str(info.value)
    with caplog.at_level("WARNING", logger="darkpose.service.api.access_control"):
        store = KeyStore(
            ["short-key", "a-long-enough-random-key-0123"], secret=SECRET, allow_short=True
        )
    assert store.lookup(b"short-key") == key_id("short-key", SECRET)
    assert {r.name for r in caplog.records} == {"darkpose.service.api.access_control.keys"}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and key_id("short-key", SECRET) in warned[0]
    assert "short-key" not in warned[0]
    assert key_id("a-long-enough-random-key-0123", SECRET) not in warned[0]
    with pytest.raises(AccessConfigError, match="DARKPOSE_METRICS_KEY: expected at least 16"):
        AccessPolicy.from_settings(api_settings(metrics_key=SecretStr("m1")))


def test_serve_exits_2_with_one_line_for_a_short_key() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "DARKPOSE_API_KEYS": "short-key", "DARKPOSE_WARMUP": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "serve", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "expected at least 16 characters" in ln]
    assert len(lines) == 1 and "short-key" not in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "security", "codes"),
    [
        ({}, False, set()),
        ({"api_keys": SecretStr("k" * 20)}, True, {"401", "429"}),  # failed-auth throttling
        ({"api_keys": SecretStr("k" * 20), "auth_failure_rate": 0.0}, True, {"401"}),
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


def test_failed_authentications_are_throttled_per_address_not_on_open_routes() -> None:
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app

    key = "a-right-key-0123456789"
    s = api_settings(
        warmup=False, api_keys=SecretStr(key), auth_failure_rate=0.001, auth_failure_burst=3
    )
    app = create_app(s)  # no lifespan (no models loaded): access control decides first
    c = TestClient(app, client=("198.51.100.30", 1))
    wrong = {"X-API-Key": "a-wrong-key-0123456789"}
    assert [c.get("/v1/models", headers=wrong).status_code for _ in range(3)] == [401] * 3
    r = c.get("/v1/models", headers={"X-API-Key": key})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "too many failed authentications" in r.json()["error"]["message"]
    assert c.get("/metrics").status_code == 200  # open without a metrics key
    assert c.get("/healthz").status_code == 200
    text = c.get("/metrics").text
    assert (
        'darkpose_client_throttled_total{client="unauthenticated",reason="auth_failures"} 1.0'
        in text
    )
    other = TestClient(app, client=("198.51.100.31", 1))  # another address: admitted
    assert other.get("/v1/models", headers={"X-API-Key": key}).status_code == 200

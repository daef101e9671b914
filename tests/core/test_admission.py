"""The admission policy: origins, per-address rate and concurrency, X-Forwarded-For trust."""

from __future__ import annotations

import ipaddress

from relay.admission import Admission, Decision, client_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def test_origin_allow_list_refuses_others_with_403() -> None:
    """An Origin outside the allow-list is refused 403; listed ones (any case, trailing /) pass."""
    admission = Admission(allowed_origins=["https://app.example"])
    assert Decision(403, "origin") == admission.check_origin("https://evil.example")
    assert admission.check_origin("HTTPS://APP.EXAMPLE/").admitted
    assert admission.check_origin(None).admitted  # non-browser clients send no Origin


def test_empty_allow_list_admits_any_origin() -> None:
    """With no allow-list every Origin is admitted (the relay warns at start instead)."""
    assert Admission().check_origin("https://anything.example").admitted


def test_rate_limit_allows_a_burst_of_twice_the_rate_then_refuses_429() -> None:
    """New connections per address: a burst of 2x the rate, then 429 ip_rate until tokens refill."""
    admission = Admission(rate_per_ip=5, max_open_per_ip=1000)
    results = [admission.admit("1.2.3.4", now=100.0).status for _ in range(11)]
    assert [0] * 10 + [429] == results
    assert Decision(429, "ip_rate") == admission.admit("1.2.3.4", now=100.0)
    assert admission.admit("1.2.3.4", now=100.2).admitted  # 0.2 s refills one token
    assert admission.admit("5.6.7.8", now=100.2).admitted  # other addresses are unaffected


def test_open_connection_limit_per_address_and_release() -> None:
    """Open connections per address are capped (429 ip_connections); a release frees a slot."""
    admission = Admission(rate_per_ip=1000, max_open_per_ip=2)
    assert [0, 0, 429] == [admission.admit("a", now=1.0).status for _ in range(3)]
    assert "ip_connections" == admission.admit("a", now=1.0).reason
    admission.release("a")
    assert admission.admit("a", now=1.0).admitted
    assert 2 == admission.open_count("a")


def test_tracked_addresses_are_bounded() -> None:
    """Past max_tracked addresses, idle ones are forgotten: memory does not grow per address."""
    admission = Admission(rate_per_ip=1, max_open_per_ip=10, max_tracked=3)
    for index in range(10):
        admission.admit(f"10.0.0.{index}", now=1.0)
        admission.release(f"10.0.0.{index}")
    assert 3 == len(admission._buckets)


def test_forwarded_for_is_trusted_only_from_a_configured_proxy() -> None:
    """X-Forwarded-For counts only when the peer is a trusted proxy; a direct client cannot spoof it."""
    assert "203.0.113.9" == client_address("10.1.2.3", "203.0.113.9", PROXIES)
    assert "198.51.100.7" == client_address("198.51.100.7", "203.0.113.9", PROXIES)
    assert "10.1.2.3" == client_address("10.1.2.3", None, PROXIES)


def test_forwarded_for_is_walked_from_the_right_past_trusted_hops() -> None:
    """The client is the rightmost address that is not one of our proxies; garbage falls back to the peer."""
    assert "203.0.113.9" == client_address("10.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.2", PROXIES)
    assert "10.0.0.1" == client_address("10.0.0.1", "not-an-ip", PROXIES)

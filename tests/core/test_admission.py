"""The admission policy: origins, per-address rate and concurrency, X-Forwarded-For trust."""

from __future__ import annotations

import ipaddress

from relay.core.admission import (
    Admission,
    Decision,
    Intake,
    address_key,
    client_address,
    socket_budget,
)

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


def test_address_key_groups_ipv6_by_prefix_and_keeps_ipv4_per_address() -> None:
    """IPv6 addresses count by their /64 (or the configured prefix); IPv4 and IPv4-mapped IPv6
    addresses by themselves; a string that is not an address as itself."""
    assert "2001:db8:1:2::/64" == address_key("2001:db8:1:2:aaaa::1")
    assert "2001:db8:1:2::/64" == address_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert "2001:db8:1:3::/64" == address_key("2001:db8:1:3::1")
    assert "2001:db8:1::/48" == address_key("2001:db8:1:2::1", 48)
    assert "2001:db8::1/128" == address_key("2001:db8::1", 128)
    assert "fe80::/64" == address_key("fe80::1%eth0")
    assert "203.0.113.9" == address_key("203.0.113.9")
    assert "203.0.113.9" == address_key("::ffff:203.0.113.9")
    assert "unix" == address_key("unix")


def test_ipv6_addresses_of_one_64_share_one_budget() -> None:
    """Two addresses of one /64 share the open-connection limit; another /64 has its own; IPv4
    neighbours do not share."""
    admission = Admission(rate_per_ip=1000, max_open_per_ip=2)
    assert admission.admit("2001:db8:0:1::1", now=1.0).admitted
    assert admission.admit("2001:db8:0:1::2", now=1.0).admitted
    assert Decision(429, "ip_connections") == admission.admit("2001:db8:0:1::3", now=1.0)
    assert admission.admit("2001:db8:0:2::1", now=1.0).admitted
    admission.release("2001:db8:0:1::99")  # any address of the /64 gives its slot back
    assert 1 == admission.open_count("2001:db8:0:1::1")
    for last in range(1, 4):
        assert admission.admit(f"198.51.100.{last}", now=1.0).admitted


def test_ipv6_prefix_is_a_setting_of_admission() -> None:
    """With ipv6_prefix=56 the whole /56 is one address for the rate limit."""
    admission = Admission(rate_per_ip=1, max_open_per_ip=100, ipv6_prefix=56)
    assert admission.admit("2001:db8:0:100::1", now=1.0).admitted
    assert admission.admit("2001:db8:0:1ff::1", now=1.0).admitted  # burst: 2
    assert Decision(429, "ip_rate") == admission.admit("2001:db8:0:1aa::1", now=1.0)
    assert admission.admit("2001:db8:0:200::1", now=1.0).admitted  # another /56


def test_intake_bounds_handshakes_per_address_and_releases_on_request_complete() -> None:
    """Handshakes in progress are capped per address (429 ip_handshakes); a completed request
    frees the slot while its socket stays counted."""
    intake = Intake(max_sockets=100, max_handshakes=100, max_handshakes_per_address=2)
    assert [0, 0, 429] == [intake.accept("192.0.2.1").status for _ in range(3)]
    assert "ip_handshakes" == intake.accept("192.0.2.1").reason
    assert intake.accept("192.0.2.2").admitted  # another address is unaffected
    intake.request_complete("192.0.2.1")
    assert 1 == intake.handshakes_from("192.0.2.1")
    assert intake.accept("192.0.2.1").admitted
    assert (3, 4) == (intake.handshakes, intake.sockets)


def test_intake_counts_ipv6_handshakes_per_64() -> None:
    """Half-open handshakes from many addresses of one /64 share one per-address bound."""
    intake = Intake(max_sockets=100, max_handshakes=100, max_handshakes_per_address=3)
    statuses = [intake.accept(f"2001:db8:5:6::{n:x}").status for n in range(1, 6)]
    assert [0, 0, 0, 429, 429] == statuses
    assert intake.accept("2001:db8:5:7::1").admitted


def test_intake_bounds_total_handshakes_and_sockets() -> None:
    """Total handshakes in progress (503 handshakes) and open sockets (503 sockets) are capped;
    a trusted proxy's sockets (address None) count only against these totals."""
    intake = Intake(max_sockets=3, max_handshakes=2, max_handshakes_per_address=10)
    assert intake.accept(None).admitted
    assert intake.accept(None).admitted
    assert Decision(503, "handshakes") == intake.accept("192.0.2.1")
    intake.request_complete(None)
    assert intake.accept("192.0.2.1").admitted
    assert Decision(503, "sockets") == intake.accept("192.0.2.2")
    intake.closed(None, handshaking=False)  # the completed one closed
    assert 2 == intake.sockets
    intake.closed("192.0.2.1", handshaking=True)  # closed before its request was complete
    assert (1, 1, 0) == (intake.sockets, intake.handshakes, intake.handshakes_from("192.0.2.1"))


def test_intake_forgets_addresses_with_no_handshake_in_progress() -> None:
    """An address's entry exists only while it has a handshake in progress: memory is bounded
    by max_handshakes."""
    intake = Intake(max_sockets=10_000, max_handshakes=10_000, max_handshakes_per_address=5)
    for n in range(1000):
        address = f"10.{n // 250}.{n % 250}.1"
        assert intake.accept(address).admitted
        intake.request_complete(address)
    assert 0 == len(intake._per_address)
    assert (0, 1000) == (intake.handshakes, intake.sockets)


def test_socket_budget_leaves_the_reserve() -> None:
    """The client sockets' budget is the file limit less the reserve, and at least 1."""
    assert 1024 - 100 == socket_budget(1024, 100)
    assert 1 == socket_budget(64, 100)

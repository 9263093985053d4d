"""Who failed logins are counted against: an IPv4 address, an IPv6 /64, never an exempt host."""

from __future__ import annotations

import pytest

from mailward.actor import Actor
from mailward.config import load_settings
from mailward.incidents import SubjectKind, open_incidents
from support.quarantine import FakeClock


def _incidents(tmp_path, clock=None, **incidents):
    settings = load_settings(
        None, {"state_dir": str(tmp_path / "state"), "incidents": {"auth_failures": 3, **incidents}}
    )
    return open_incidents(settings, clock=clock) if clock is not None else open_incidents(settings)


def test_an_ipv6_guesser_is_its_64_not_each_fresh_address(tmp_path):
    """One IPv6 host holds a /64: 100 failures from 100 of its addresses blocked nothing."""
    incidents = _incidents(tmp_path)
    blocks = [incidents.failed_login(f"2001:db8:1:2::{i:x}") for i in range(1, 4)]
    assert blocks[:2] == [None, None]
    assert blocks[2] is not None and (blocks[2].kind, blocks[2].value) == (SubjectKind.NETWORK, "2001:db8:1:2::/64")
    assert incidents.client_block("2001:db8:1:2:ffff::9") is not None  # any address of that /64, at connect
    assert incidents.client_block("2001:db8:1:3::1") is None  # the next /64 is someone else
    incidents.close()


def test_a_64_holding_an_exempt_network_blocks_the_address_alone(tmp_path):
    incidents = _incidents(tmp_path, exempt_networks=["2001:db8:5:5::10/128"])
    for _ in range(2):
        assert incidents.failed_login("2001:db8:5:5::66") is None
    block = incidents.failed_login("2001:db8:5:5::66")
    assert (block.kind, block.value) == (SubjectKind.ADDRESS, "2001:db8:5:5::66")
    assert incidents.client_block("2001:db8:5:5::10") is None
    incidents.close()


def test_an_ipv4_mapped_address_is_the_ipv4_address(tmp_path):
    incidents = _incidents(tmp_path)
    incidents.failed_login("::ffff:192.0.2.77")
    incidents.failed_login("[IPv6:::ffff:192.0.2.77]")
    block = incidents.failed_login("192.0.2.77")
    assert (block.kind, block.value) == (SubjectKind.ADDRESS, "192.0.2.77")
    assert incidents.client_block("::ffff:192.0.2.77") is not None
    incidents.close()


@pytest.mark.parametrize("ends", ["lifted", "expired"])
@pytest.mark.parametrize("first, later", [("192.0.2.7", "192.0.2.7"), ("2001:db8:1:2::1", "2001:db8:1:2::99")])
def test_the_failures_behind_a_block_never_count_again_once_it_ends(tmp_path, first, later, ends):
    """A /64 block kept its count when lifted (as the alert says to) or expired: one mistyped password
    from that /64 blocked it again at once, where an IPv4 address started afresh."""
    clock = FakeClock()
    incidents = _incidents(tmp_path, clock, auth_block_for=300.0, auth_window=3600.0)
    for _ in range(3):
        block = incidents.failed_login(first)
    assert block is not None
    if ends == "lifted":
        assert incidents.lift(block.kind, block.value, Actor("analyst", "mx1"), "false positive") is not None
    clock.now += 301  # past the block's own counting bucket too
    assert incidents.client_block(later) is None
    assert incidents.failed_login(later) is None and incidents.failed_login(later) is None
    assert incidents.failed_login(later) is not None  # three new ones block again
    incidents.close()

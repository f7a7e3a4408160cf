"""is_ip_literal: the fast IPv4 check agrees with the ipaddress module on every kind of host."""

from __future__ import annotations

import ipaddress

import pytest

from b2bua.sip.address import is_ip_literal


def reference(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("host", [
    "127.0.0.1", "0.0.0.0", "255.255.255.255", "192.0.2.7", "10.0.0.256", "01.2.3.4", "1.2.3",
    "1.2.3.4.5", "1.2.3.4 ", "", "pbx.example.com", "::1", "2001:db8::7", "::", "[::1]",
    "fe80::1%eth0", "::ffff:192.0.2.1", "1.2.3.04", "٣.2.3.4",
])
def test_agrees_with_ipaddress(host: str) -> None:
    assert is_ip_literal(host) is reference(host)

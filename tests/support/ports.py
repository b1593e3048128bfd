"""Free loopback ports for servers and workers a test starts itself."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port that is free now.

    It is drawn below the kernel's ephemeral range: a port the kernel hands out for ``bind(0)``
    can go to an outgoing connection before the server binds it (seen once in CI as "Address
    already in use"), while ports below that range are taken only by explicit binds.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10000, max(10001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free loopback port below the ephemeral range")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports from :func:`free_port`."""
    ports: list[int] = []
    for _ in range(100 * count):
        if len(ports) == count:
            break
        port = free_port()
        if port not in ports:
            ports.append(port)
    if len(ports) < count:
        pytest.fail(f"found only {len(ports)} of {count} free loopback ports")
    return ports

"""Two "hosts" on one machine for the two-host test: network namespaces joined by two veth
pairs, every address inside the namespaces (nothing is added to the machine's own network).

=====  ==========================================  =========================================
link   host A end                                  host B end
=====  ==========================================  =========================================
lan    broker (ZeroMQ, CURVE) and PostgreSQL       workers; the test cuts this one
wan    the simulated Keepa API (through a relay)   workers' Keepa calls (stays up in a cut)
=====  ==========================================  =========================================

Names are unique per run (``kf`` + pid + a random tag); ``remove()`` deletes both namespaces,
which deletes the veth ends inside them; links not moved yet are deleted by name.
``entered(ns)`` moves the calling *thread* into a namespace for a while (``setns``), so the
test can reach host A's loopback services (the simulator's admin API, the broker).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence

CLONE_NEWNET = 0x40000000
IP_TIMEOUT_S = 20


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no permission)."""


def why_unavailable() -> str | None:
    """Why the two-host test cannot run here, or None."""
    if os.geteuid() != 0:
        return "the two-host test needs root (network namespaces, veth pairs); CI runs as root"
    for tool in ("ip", "unshare", "runuser"):
        if shutil.which(tool) is None:
            return f"the two-host test needs the {tool} command (iproute2, util-linux)"
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


class TwoHosts:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"  # 9 chars: names <= 15
        self.ns_a, self.ns_b = f"kf{tag}A", f"kf{tag}B"
        self.links = {"lan": (f"kl{tag}a", f"kl{tag}b"), "wan": (f"kw{tag}a", f"kw{tag}b")}
        # A private 10.x.y.0/29 per run: .1/.2 the lan, .5/.6 the wan.
        x, y = 100 + secrets.randbelow(100), secrets.randbelow(250)
        self.net = f"10.{x}.{y}"
        self.lan_a, self.lan_b = f"{self.net}.1", f"{self.net}.2"
        self.wan_a, self.wan_b = f"{self.net}.5", f"{self.net}.6"
        self.made_ns: list[str] = []
        self.made_links: list[str] = []

    def create(self) -> TwoHosts:
        for ns in (self.ns_a, self.ns_b):
            ip("netns", "add", ns)
            self.made_ns.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        plan = {"lan": (self.lan_a, self.lan_b), "wan": (self.wan_a, self.wan_b)}
        for name, (end_a, end_b) in self.links.items():
            ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
            self.made_links.append(end_a)
            for end, ns, addr in (
                (end_a, self.ns_a, plan[name][0]),
                (end_b, self.ns_b, plan[name][1]),
            ):
                ip("link", "set", end, "netns", ns)
                ip("-n", ns, "addr", "add", f"{addr}/30", "dev", end)
                ip("-n", ns, "link", "set", end, "up")
        return self

    def remove(self) -> None:
        """Delete everything made, whatever state it is in (every step tried)."""
        for ns in self.made_ns:
            with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
                ip("netns", "del", ns)
        for link in self.made_links:  # gone with its namespace, unless never moved there
            with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
                ip("link", "del", link)
        self.made_ns.clear()
        self.made_links.clear()

    def exists(self) -> bool:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
        names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
        return bool(names & {self.ns_a, self.ns_b})

    def set_lan_on_b(self, up: bool) -> None:
        ip("-n", self.ns_b, "link", "set", self.links["lan"][1], "up" if up else "down")

    @staticmethod
    def prefix(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def on_b(self, hostname: str, argv: Sequence[str]) -> list[str]:
        """``argv`` on host B: its network namespace and a UTS namespace of its own, so its
        processes report another host name to the broker (which then never signals them)."""
        script = 'hostname "$0" && exec "$@"'
        return [*self.prefix(self.ns_b), "unshare", "--uts", "sh", "-c", script, hostname, *argv]


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """The calling thread in network namespace ``ns`` until the block ends (sockets made
    inside keep that namespace afterwards)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)

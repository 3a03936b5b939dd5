"""Network namespaces made by the tests: client, router (p3scan) and server hosts.

Each namespace is held by a ``sleep`` process started with ``unshare --net``; commands run
in it through ``nsenter``.  Nothing is created in the root namespace, and no name is
registered under /run/netns: when the holders die, the namespaces, their veth links and
their iptables rules disappear.  Recipe: ../shared/recipes/real-components.md §6.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import require_program, require_root, stop_process, wait_until

CLIENT_V4, ROUTER_CLIENT_V4 = "192.0.2.2", "192.0.2.1"
ROUTER_SERVER_V4, SERVER_V4 = "198.51.100.1", "198.51.100.2"
CLIENT_V6, ROUTER_CLIENT_V6 = "2001:db8:1::2", "2001:db8:1::1"
ROUTER_SERVER_V6, SERVER_V6 = "2001:db8:2::1", "2001:db8:2::2"


class Namespace:
    """A network namespace kept alive by a holder process."""

    def __init__(self, name: str):
        require_root("network namespaces")
        require_program("/usr/bin/nsenter", "util-linux")
        self.name = name
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"],
                                       stdin=subprocess.DEVNULL)
        self.pid = self.holder.pid
        wait_until(self._isolated, 10, f"namespace {name} to exist")
        self.run("ip", "link", "set", "lo", "up")

    def _isolated(self) -> bool:
        """True once the holder runs ``sleep`` in a network namespace of its own.

        Until then nsenter would enter *our* namespace: never run a command before this.
        """
        try:
            theirs = os.readlink(f"/proc/{self.pid}/ns/net")
            comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        except OSError:
            return False
        return comm == "sleep" and theirs != os.readlink("/proc/self/ns/net")

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n"]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(self.prefix + list(cmd), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"in {self.name}: {' '.join(cmd)} failed "
                                 f"({result.returncode}): {result.stderr}{result.stdout}")
        return result.stdout

    def close(self) -> None:
        stop_process(self.holder, 5)


@dataclass
class Topology:
    """client ns <-veth-> router ns (runs p3scan) <-veth-> server ns."""

    client: Namespace
    router: Namespace
    server: Namespace

    @classmethod
    def create(cls, tag: str) -> Topology:
        require_program("/usr/sbin/iptables", "iptables")
        topo = cls(Namespace(f"{tag}-cli"), Namespace(f"{tag}-rtr"), Namespace(f"{tag}-srv"))
        try:
            topo._wire()
        except BaseException:
            topo.close()
            raise
        return topo

    def _wire(self) -> None:
        cli, rtr, srv = self.client, self.router, self.server
        cli.run("ip", "link", "add", "c0", "type", "veth", "peer", "name", "r0",
                "netns", str(rtr.pid))
        srv.run("ip", "link", "add", "s0", "type", "veth", "peer", "name", "r1",
                "netns", str(rtr.pid))
        _address(cli, "c0", f"{CLIENT_V4}/24", f"{CLIENT_V6}/64")
        _address(rtr, "r0", f"{ROUTER_CLIENT_V4}/24", f"{ROUTER_CLIENT_V6}/64")
        _address(rtr, "r1", f"{ROUTER_SERVER_V4}/24", f"{ROUTER_SERVER_V6}/64")
        _address(srv, "s0", f"{SERVER_V4}/24", f"{SERVER_V6}/64")
        cli.run("ip", "route", "add", "default", "via", ROUTER_CLIENT_V4)
        cli.run("ip", "-6", "route", "add", "default", "via", ROUTER_CLIENT_V6)
        srv.run("ip", "route", "add", "default", "via", ROUTER_SERVER_V4)
        srv.run("ip", "-6", "route", "add", "default", "via", ROUTER_SERVER_V6)
        rtr.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        rtr.run("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")

    def redirect(self, dport: int, to_port: int) -> None:
        """In the router: traffic from the client for ``dport`` goes to p3scan (v4 and v6)."""
        for tool in ("iptables", "ip6tables"):
            self.router.run(tool, "-t", "nat", "-A", "PREROUTING", "-i", "r0", "-p", "tcp",
                            "--dport", str(dport), "-j", "REDIRECT", "--to-ports", str(to_port))

    def close(self) -> None:
        for ns in (self.client, self.router, self.server):
            ns.close()


def _address(ns: Namespace, dev: str, v4: str, v6: str) -> None:
    ns.run("ip", "addr", "add", v4, "dev", dev)
    ns.run("ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
    ns.run("ip", "link", "set", dev, "up")

"""Network hosts for the partition scenarios (docs/RELIABILITY.md, "Partitions"): one Linux
network namespace per host, each joined by a veth pair to a bridge in the root namespace on a
private /24 made here (10.231.N.0/24, N free on this machine). The bridge holds the services'
address (.1: the stack's own PostgreSQL cluster, redis-server and simulators listen on it);
host i gets .(10 + i).

A partition drops packets with iptables rules inside the host's namespace, both directions:
nothing is refused or reset, the host's connections just stop hearing back, which is what a
real partition does (a link taken down instead gives immediate errors). Healing removes the
rules; TCP's retransmissions then carry on the connections that survived.

Names carry the creating process's id (`shp<pid>-<host>`, bridge `shp<pid>br`), so a run
clears what a crashed earlier run left behind (its process is gone) and never what a run
going on beside it made."""
import ipaddress
import os
import re
import shutil
import subprocess

PREFIX = "shp"
SUBNETS = ipaddress.ip_network("10.231.0.0/16")
IPTABLES = "iptables"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_iptables():
    """Debian's iptables, installed here when it is missing (the way tests/browser.py installs
    Chromium: CI runs as root). Returns None, or why it cannot be had."""
    if shutil.which(IPTABLES):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "iptables is missing (Debian: apt-get install iptables)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "install", "-y", "-qq", "iptables"], ["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "iptables"]):
        subprocess.run(step, env=env, capture_output=True, timeout=600, check=False)
        if step[1] == "install" and shutil.which(IPTABLES):
            return None
    return "apt-get install iptables did not provide iptables"


def unavailable_reason():
    """None when hosts can be made and partitioned here, else why not (the scenarios say it)."""
    if os.geteuid() != 0:
        return "not root: network namespaces and iptables need root"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    missing = ensure_iptables()
    if missing:
        return missing
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        rule = subprocess.run(["ip", "netns", "exec", probe, IPTABLES, "-A", "OUTPUT", "-p", "tcp", "--dport", "9",
                               "-j", "DROP"], capture_output=True, text=True, timeout=30, check=False)
        if rule.returncode != 0:
            return f"iptables cannot add a rule in a namespace: {rule.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale():
    """Delete the namespaces and bridges of earlier runs whose process is gone."""
    pattern = re.compile(rf"^{PREFIX}(\d+)(-|br$)")
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = pattern.match(name)
        if found and not _alive(int(found.group(1))):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        found = pattern.match(name)
        if found and not _alive(int(found.group(1))):
            _ip("link", "del", name, check=False)


def _free_subnet():
    used = _ip("-o", "-4", "addr", "show", check=False).stdout
    for subnet in SUBNETS.subnets(new_prefix=24):
        if f" {subnet.network_address + 1}/" not in used and f" {subnet.network_address + 10}/" not in used:
            return subnet
    raise RuntimeError(f"no free /24 left in {SUBNETS}")


class Network:
    """A bridge and one namespace per named host. `address(host)` is the host's address,
    `gateway` the services' address; `run_in(host, args)` wraps a command to run on that host."""

    def __init__(self, hosts):
        self.hosts = list(hosts)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.subnet = None
        self.made = []
        self.partitioned = set()

    def namespace(self, host):
        return f"{self.tag}-{host}"

    @property
    def gateway(self):
        return str(self.subnet.network_address + 1)

    def address(self, host):
        return str(self.subnet.network_address + 10 + self.hosts.index(host))

    def create(self):
        """A network that fails to come up is destroyed."""
        remove_stale()
        try:
            self.subnet = _free_subnet()
            _ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, host in enumerate(self.hosts):
                ns, outside, inside = self.namespace(host), f"{self.tag}v{index}", "eth0"
                _ip("netns", "add", ns)
                self.made.append(("netns", ns))
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            return self
        except BaseException:
            self.destroy()
            raise

    def run_in(self, host, args):
        return ["ip", "netns", "exec", self.namespace(host), *args]

    def _iptables(self, host, *args):
        subprocess.run(self.run_in(host, [IPTABLES, *args]), check=True, capture_output=True, timeout=30)

    def partition(self, host, ports=None):
        """Drop every packet between `host` and the services' address (`ports`: only those TCP
        ports, e.g. Redis's alone), in both directions."""
        match_out = ["-d", self.gateway] + (["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, ports))]
                                            if ports else [])
        match_in = ["-s", self.gateway] + (["-p", "tcp", "-m", "multiport", "--sports", ",".join(map(str, ports))]
                                           if ports else [])
        self._iptables(host, "-I", "OUTPUT", *match_out, "-j", "DROP")
        self._iptables(host, "-I", "INPUT", *match_in, "-j", "DROP")
        self.partitioned.add(host)

    def heal(self, host):
        self._iptables(host, "-F", "OUTPUT")
        self._iptables(host, "-F", "INPUT")
        self.partitioned.discard(host)

    def heal_all(self):
        for host in list(self.partitioned):
            self.heal(host)

    def destroy(self):
        """Always safe: deletes what was made (a namespace's veth end goes with it)."""
        for kind, name in reversed(self.made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self.made = []

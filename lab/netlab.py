"""Network namespaces of a test's own, with a router that can cut traffic silently.

``NetLab(["n1", "n2", "n3"])`` makes, on ``create()``:

- a router namespace (``lcn<id>-r``, IPv4 forwarding on) and one namespace per member
  (``lcn<id>-<member>``), each member linked to the router by a veth pair on a /24 of
  its own: member ``i`` (1-based) is ``10.<X>.<i>.2``, the router ``10.<X>.<i>.1``;
- a veth pair from the root namespace to the router (the "clients" subnet
  ``10.<X>.0.0/24``, the root side ``10.<X>.0.2``) and routes in the root namespace to
  every member's /24, so that agents, consumers and tests running here (beside
  PostgreSQL on 127.0.0.1) reach every member at ``address(member)``.

``X`` is picked in 200-250 so that no route of the root namespace and no other lab
overlaps ``10.<X>.0.0/16``. Every name starts with ``lcn`` and the lab's six hex digits
(interface names stay within Linux's 15 characters), so leftovers can be found.

Cuts are policy-routing rules in the router (``ip rule ... blackhole``): a forwarded
packet that matches is dropped without any ICMP answer, so a TCP connect across a cut
times out instead of being refused, and an established connection simply stops
carrying data. ``cut(a, b)`` drops packets from ``a`` to ``b`` only; ``cut_both``,
``partition``, ``isolate`` and ``cut_client`` build on it; ``heal()`` removes every
rule. The root namespace is called ``"client"`` in cuts. Traffic inside one namespace
(a member talking to itself, on its address or on 127.0.0.1) never crosses the router.

The owner (this process's pid and start time) and every name are recorded in
``/run/lifecycle-netlab/<id>.json`` before anything is made; ``reap_leftovers()``
destroys labs whose owner is gone (``create()`` calls it first). ``destroy()`` is
idempotent, runs at interpreter exit, and kills every process still in the lab's
namespaces before deleting them.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from lab.rabbit_node import _owner_alive, _owner_token

PREFIX = "lcn"
CLIENT = "client"
STATE_DIR = Path("/run/lifecycle-netlab")
NETNS_ETC = Path("/etc/netns")

_MEMBER_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,11}$")
# Names of namespaces, and of root-namespace interfaces, that a lab makes.
_NAMESPACE_PATTERN = re.compile(rf"^({PREFIX}[0-9a-f]{{6}})-[a-z0-9]+$")
_ROOT_LINK_PATTERN = re.compile(rf"^({PREFIX}[0-9a-f]{{6}})c$")
_SECOND_OCTETS = range(200, 251)
_RULE_PREF_BASE = 1000  # cut rules' priorities: before "lookup main" (32766)
_COMMAND_TIMEOUT = 15.0
_POLL_INTERVAL = 0.05


class NetLabError(RuntimeError):
    """A command that builds, cuts or tears down a lab failed."""


def ip_available() -> bool:
    """Whether iproute2's ``ip`` is installed and network namespaces can be made here
    (root, or the capability to)."""
    return shutil.which("ip") is not None and os.geteuid() == 0


def run(command: Sequence[str], *, timeout: float = _COMMAND_TIMEOUT, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (its own process group, killed whole on timeout) and return the
    result; NetLabError naming the command and its stderr when it fails and ``check``."""
    process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise NetLabError(f"`{' '.join(command)}` timed out after {timeout}s: "
                          f"{(stderr or stdout).strip()}") from None
    result = subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise NetLabError(f"`{' '.join(command)}` exited {result.returncode}: "
                          f"{(stderr or stdout).strip()}")
    return result


class NetLab:
    """A router and one namespace per member, linked to the root namespace ("client");
    ``create()`` it, ``destroy()`` it (or use it as a context manager)."""

    def __init__(self, members: Iterable[str]) -> None:
        self.members: list[str] = list(members)
        if not self.members:
            raise ValueError("a lab needs at least one member")
        for member in self.members:
            if not _MEMBER_PATTERN.match(member) or member in (CLIENT, "r"):
                raise ValueError(f"member names are 1-12 lowercase letters and digits, "
                                 f"starting with a letter, not {CLIENT!r} or 'r': {member!r}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"member names must be distinct: {self.members}")
        if len(self.members) > 250:
            raise ValueError("at most 250 members")
        self.id = f"{PREFIX}{secrets.token_hex(3)}"
        self.router = f"{self.id}-r"
        self.octet = 0  # the X of 10.X.0.0/16, picked by create()
        self._cuts: dict[tuple[str, str], int] = {}  # (from, to) -> the rule's priority
        self._lock = threading.RLock()
        self._created = False
        self._destroyed = False

    # -- names and addresses ---------------------------------------------------------------

    @property
    def record(self) -> Path:
        """The file recording this lab's owner and names."""
        return STATE_DIR / f"{self.id}.json"

    def namespace(self, member: str) -> str:
        """The namespace of ``member``."""
        self._check_member(member)
        return f"{self.id}-{member}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, the router's last."""
        return [self.namespace(member) for member in self.members] + [self.router]

    def _index(self, member: str) -> int:
        return self.members.index(member) + 1

    def subnet(self, member: str) -> ipaddress.IPv4Network:
        """The /24 linking ``member`` (or ``"client"``, the root namespace) to the router."""
        self._require_octet()
        third = 0 if member == CLIENT else self._index(self._check_member(member))
        return ipaddress.IPv4Network(f"10.{self.octet}.{third}.0/24")

    def address(self, member: str) -> str:
        """``member``'s address (``"client"``: the root namespace's address in the lab)."""
        return str(self.subnet(member).network_address + 2)

    @property
    def client_address(self) -> str:
        """The root namespace's address on the clients' subnet."""
        return self.address(CLIENT)

    def _gateway(self, member: str) -> str:
        return str(self.subnet(member).network_address + 1)

    def _links(self, member: str) -> tuple[str, str]:
        """(the member's or root's end, the router's end) of ``member``'s veth pair."""
        if member == CLIENT:
            return f"{self.id}c", f"{self.id}rc"
        index = self._index(member)
        return f"{self.id}m{index}", f"{self.id}r{index}"

    def exec_prefix(self, member: str) -> list[str]:
        """The command prefix running a program in ``member``'s namespace (empty for
        ``"client"``: the root namespace)."""
        if member == CLIENT:
            return []
        return ["ip", "netns", "exec", self.namespace(member)]

    def hosts_file(self, member: str, entries: dict[str, str], *,
                   hostname: str | None = None) -> Path:
        """Write ``/etc/netns/<ns>/hosts`` (``ip netns exec`` bind-mounts it over
        ``/etc/hosts`` for the programs it runs): ``localhost`` and this machine's
        hostname on 127.0.0.1, then ``entries`` (name -> address). With ``hostname``
        also ``/etc/netns/<ns>/hostname`` (the file only: the UTS hostname is shared)."""
        if member == CLIENT:
            raise ValueError("the root namespace's /etc/hosts is the machine's own")
        directory = NETNS_ETC / self.namespace(member)
        lines = [f"127.0.0.1\tlocalhost {os.uname().nodename}", "::1\tlocalhost ip6-localhost"]
        lines += [f"{address}\t{name}" for name, address in entries.items()]
        files = {"hosts": "\n".join(lines) + "\n"}
        if hostname is not None:
            files["hostname"] = hostname + "\n"
        for attempt in range(3):  # another lab's teardown may rmdir an empty /etc/netns
            try:
                directory.mkdir(parents=True, exist_ok=True)
                for name, text in files.items():
                    (directory / name).write_text(text)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        return directory / "hosts"

    # -- lifecycle -------------------------------------------------------------------------

    def create(self) -> NetLab:
        """Make the namespaces, links, addresses and routes (idempotent once made)."""
        with self._lock:
            if self._destroyed:
                raise NetLabError(f"lab {self.id} was destroyed; make a new NetLab")
            if self._created:
                return self
            self._created = True
        reap_leftovers()
        atexit.register(self.destroy)
        try:
            self._reserve()
            self._build()
            return self
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Kill every process in the lab's namespaces, delete the namespaces, links,
        root routes and ``/etc/netns`` directories. Safe to call more than once."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            self._cuts.clear()
        try:
            _teardown(self.namespaces, [self._links(CLIENT)[0]])
        finally:
            self.record.unlink(missing_ok=True)
            atexit.unregister(self.destroy)

    def __enter__(self) -> NetLab:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.destroy()

    def pids(self, member: str | None = None) -> list[int]:
        """Pids of the processes in ``member``'s namespace (every lab namespace if None)."""
        spaces = self.namespaces if member is None else [self.namespace(member)]
        return [pid for space in spaces for pid in _namespace_pids(space)]

    # -- cuts ------------------------------------------------------------------------------

    @property
    def cuts(self) -> set[tuple[str, str]]:
        """The directed pairs ``(from, to)`` whose packets are dropped now."""
        with self._lock:
            return set(self._cuts)

    def cut(self, source: str, destination: str) -> None:
        """Drop every packet from ``source`` to ``destination`` (one direction only;
        either may be ``"client"``). Cutting a pair already cut does nothing."""
        self._check_end(source)
        self._check_end(destination)
        if source == destination:
            raise ValueError(f"cannot cut {source!r} from itself")
        with self._lock:
            self._require_created()
            if (source, destination) in self._cuts:
                return
            used = set(self._cuts.values())
            pref = next(p for p in itertools.count(_RULE_PREF_BASE) if p not in used)
            run(["ip", "-n", self.router, "rule", "add", "pref", str(pref),
                 "from", str(self.subnet(source)), "to", str(self.subnet(destination)),
                 "blackhole"])
            self._cuts[(source, destination)] = pref

    def restore(self, source: str, destination: str) -> None:
        """Undo ``cut(source, destination)`` (nothing if that pair is not cut)."""
        with self._lock:
            pref = self._cuts.pop((source, destination), None)
            if pref is not None:
                run(["ip", "-n", self.router, "rule", "del", "pref", str(pref)])

    def cut_both(self, a: str, b: str) -> None:
        """Drop packets between ``a`` and ``b`` in both directions."""
        self.cut(a, b)
        self.cut(b, a)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Cut every pair of members in different ``groups``, both ways. Members in no
        group keep talking to everyone; ``"client"`` may be put in a group too."""
        seen: set[str] = set()
        for group in groups:
            for member in group:
                self._check_end(member)
                if member in seen:
                    raise ValueError(f"{member!r} is in more than one group: {groups}")
                seen.add(member)
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                for a in group:
                    for b in other:
                        self.cut_both(a, b)

    def isolate(self, member: str, *, from_client: bool = True) -> None:
        """Cut ``member`` from every other member, and from the root namespace unless
        ``from_client`` is false, both ways."""
        self._check_member(member)
        others = [other for other in self.members if other != member]
        if from_client:
            others.append(CLIENT)
        for other in others:
            self.cut_both(member, other)

    def cut_client(self, member: str) -> None:
        """Cut ``member`` from the root namespace (agents, consumers, tests), both ways."""
        self.cut_both(CLIENT, self._check_member(member))

    def heal(self) -> None:
        """Remove every cut this lab made."""
        with self._lock:
            for pair in list(self._cuts):
                self.restore(*pair)

    # -- internals -------------------------------------------------------------------------

    def _check_member(self, member: str) -> str:
        if member not in self.members:
            raise ValueError(f"{member!r} is not a member of lab {self.id} ({self.members})")
        return member

    def _check_end(self, end: str) -> str:
        return end if end == CLIENT else self._check_member(end)

    def _require_octet(self) -> None:
        if not self.octet:
            raise NetLabError(f"lab {self.id} has no addresses before create()")

    def _require_created(self) -> None:
        if not self._created or self._destroyed:
            raise NetLabError(f"lab {self.id} is not created (or was destroyed)")

    def _reserve(self) -> None:
        """Pick the lab's 10.X.0.0/16 and write its record, under the state directory's
        lock so that two labs made at once never pick the same X."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with _state_lock():
            taken = _octets_in_use()
            free = [octet for octet in _SECOND_OCTETS if octet not in taken]
            if not free:
                raise NetLabError("no free 10.X.0.0/16 with X in 200-250 for a lab")
            self.octet = random.choice(free)
            record = {"owner": _owner_token(), "id": self.id, "octet": self.octet,
                      "namespaces": self.namespaces, "root_links": [self._links(CLIENT)[0]]}
            temporary = self.record.with_suffix(".tmp")
            temporary.write_text(json.dumps(record))
            temporary.replace(self.record)

    def _build(self) -> None:
        for space in self.namespaces:
            run(["ip", "netns", "add", space])
            run(["ip", "-n", space, "link", "set", "lo", "up"])
        run(["ip", "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        for member in [CLIENT, *self.members]:
            own, routers = self._links(member)
            where = [] if member == CLIENT else ["netns", self.namespace(member)]
            run(["ip", "link", "add", own, *where, "type", "veth",
                 "peer", "name", routers, "netns", self.router])
            prefix = [] if member == CLIENT else ["-n", self.namespace(member)]
            length = self.subnet(member).prefixlen
            run(["ip", *prefix, "addr", "add", f"{self.address(member)}/{length}", "dev", own])
            run(["ip", *prefix, "link", "set", own, "up"])
            run(["ip", "-n", self.router, "addr", "add",
                 f"{self._gateway(member)}/{length}", "dev", routers])
            run(["ip", "-n", self.router, "link", "set", routers, "up"])
            if member != CLIENT:
                run(["ip", "-n", self.namespace(member), "route", "add", "default",
                     "via", self._gateway(member)])
                run(["ip", "route", "add", str(self.subnet(member)),
                     "via", self._gateway(CLIENT), "dev", self._links(CLIENT)[0]])


# -- teardown and leftovers ----------------------------------------------------------------

def _namespace_pids(space: str) -> list[int]:
    result = run(["ip", "netns", "pids", space], check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _existing_namespaces() -> set[str]:
    result = run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _root_links() -> set[str]:
    result = run(["ip", "-o", "link", "show"], check=False)
    return {line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()
            if line.count(":") >= 2}


def _teardown(namespaces: Sequence[str], root_links: Sequence[str]) -> None:
    """Kill every process in ``namespaces`` (SIGKILL, then wait for them to go), delete
    ``root_links`` (their routes go with them), the namespaces and their /etc/netns."""
    present = _existing_namespaces()
    spaces = [space for space in namespaces if space in present]
    deadline = time.monotonic() + 15
    while True:
        pids = [pid for space in spaces for pid in _namespace_pids(space)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            raise NetLabError(f"processes {pids} in namespaces {spaces} survived SIGKILL")
        time.sleep(_POLL_INTERVAL)
    links = _root_links()
    errors = []
    for link in root_links:
        if link in links:
            result = run(["ip", "link", "del", link], check=False)
            if result.returncode != 0 and link in _root_links():
                errors.append(f"ip link del {link}: {result.stderr.strip()}")
    for space in spaces:
        result = run(["ip", "netns", "del", space], check=False)
        if result.returncode != 0 and space in _existing_namespaces():
            errors.append(f"ip netns del {space}: {result.stderr.strip()}")
    for space in namespaces:
        shutil.rmtree(NETNS_ETC / space, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only if empty: other labs' (or anyone's) stay
    if errors:
        raise NetLabError("tearing down a lab: " + "; ".join(errors))


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _records() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(STATE_DIR.glob(f"{PREFIX}*.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append((path, json.loads(path.read_text())))
    return found


def _octets_in_use() -> set[int]:
    """Second octets of 10.X.0.0/16 that a lab records or a root route overlaps."""
    taken = {int(record.get("octet", 0)) for _, record in _records()}
    result = run(["ip", "-j", "route", "show", "table", "all"], check=False)
    routes = json.loads(result.stdout or "[]") if result.returncode == 0 else []
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("default", "") or ":" in destination:
            continue
        with contextlib.suppress(ValueError):
            network = ipaddress.IPv4Network(destination, strict=False)
            if network.prefixlen == 0:
                continue
            for octet in _SECOND_OCTETS:
                if network.overlaps(ipaddress.IPv4Network(f"10.{octet}.0.0/16")):
                    taken.add(octet)
    return taken


def reap_leftovers() -> list[str]:
    """Destroy labs whose owning process is gone (by their records), and lab-named
    namespaces, root links and /etc/netns directories that no record explains; returns
    the ids of the labs reaped."""
    reaped: list[str] = []
    if not ip_available():
        return reaped
    with _state_lock():
        records = _records()
        live = set()
        for path, record in records:
            lab = str(record.get("id", ""))
            if _owner_alive(str(record.get("owner", ""))):
                live.add(lab)
                continue
            with contextlib.suppress(NetLabError):
                _teardown(list(record.get("namespaces", [])),
                          list(record.get("root_links", [])))
                path.unlink(missing_ok=True)
                reaped.append(lab)
        # Names of a lab no record explains (its record lost): a crash's leftovers.
        orphans: dict[str, tuple[list[str], list[str]]] = {}
        for space in _existing_namespaces():
            if (match := _NAMESPACE_PATTERN.match(space)) and match[1] not in live:
                orphans.setdefault(match[1], ([], []))[0].append(space)
        for link in _root_links():
            if (match := _ROOT_LINK_PATTERN.match(link)) and match[1] not in live:
                orphans.setdefault(match[1], ([], []))[1].append(link)
        for lab, (spaces, links) in orphans.items():
            with contextlib.suppress(NetLabError):
                _teardown(spaces, links)
                reaped.append(lab)
        if NETNS_ETC.exists():
            for directory in NETNS_ETC.iterdir():
                match = _NAMESPACE_PATTERN.match(directory.name)
                if match and match[1] not in live:
                    shutil.rmtree(directory, ignore_errors=True)
    return sorted(set(reaped))


def leftovers(lab_id: str | None = None) -> dict[str, list[str]]:
    """What labs left on this machine (only lab ``lab_id``'s, if given): namespaces,
    root links, /etc/netns directories and records, for tests asserting that nothing is
    left."""
    def ours(name: str) -> bool:
        return name.startswith(lab_id) if lab_id else True
    return {
        "namespaces": sorted(s for s in _existing_namespaces()
                             if _NAMESPACE_PATTERN.match(s) and ours(s)),
        "root_links": sorted(link for link in _root_links()
                             if _ROOT_LINK_PATTERN.match(link) and ours(link)),
        "netns_dirs": sorted(d.name for d in NETNS_ETC.glob(f"{PREFIX}*") if ours(d.name)),
        "records": sorted(p.name for p in STATE_DIR.glob(f"{PREFIX}*.json") if ours(p.name)),
    }

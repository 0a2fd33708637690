"""Transports (examples/README.md, "Transports: tcp and ipc"): the endpoints a cell's binding roles
are given, and which cells a transport can run."""
import math
import os
import secrets
import socket
import threading
from pathlib import Path

TRANSPORTS = ("tcp", "ipc")
WILDCARD = "tcp://127.0.0.1:*"  # what a spec gives a binding role; over ipc it becomes a path
UNIX_IPC = "unix-ipc"  # the registry's `lacks:` feature: ipc:// is not a Unix domain socket (NetMQ)
SHORT = Path("/tmp")  # a Unix socket's path must fit in 107 bytes; a run folder's need not
_reserved, _reserving = set(), threading.Lock()  # NetMQ ports of the cells running in this process


def ephemeral_ports():
    """The range the kernel draws from for a connecting socket, or a wildcard bind (`:*`)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


class IpcFolder:
    """The cell's `ipc/` folder, where its Unix sockets live, reached through a short link
    /tmp/btb-XXXXXXXX (unique per cell), removed when the cell ends. `names`: (role, index, flag)
    of every endpoint the cell will bind, when a NetMQ role is among them: NetMQ binds TCP at a
    port derived from the name, so the eight digits are drawn again until those ports are distinct,
    free, held by no other cell of this process, and outside the kernel's ephemeral range (where
    every connecting socket and every `:*` bind takes its port: a CI run lost a NetMQ publisher's
    port to one of them). Another program binding that very port can still make the role fail
    with `bind`."""

    def __init__(self, cell_dir, names=()):
        self.folder = Path(cell_dir).resolve() / "ipc"
        self.folder.mkdir(parents=True, exist_ok=True)
        ephemeral = ephemeral_ports()
        while True:
            self.link = SHORT / f"btb-{secrets.token_hex(4)}"
            self.ports = {netmq_port(self.endpoint(*name).removeprefix("ipc://")) for name in names}
            if len(self.ports) < len(names) or any(port in ephemeral for port in self.ports):
                continue
            with _reserving:
                if self.ports & _reserved or not all(map(free, self.ports)):
                    continue
                try:
                    os.symlink(self.folder, self.link)
                except FileExistsError:
                    continue  # another cell drew the same eight digits
                _reserved.update(self.ports)
                break

    def endpoint(self, role, index, flag):
        return f"ipc://{self.link}/{role}{index}-{flag}"

    def close(self):
        self.link.unlink(missing_ok=True)
        with _reserving:
            _reserved.difference_update(self.ports)


def netmq_port(name):
    """The TCP port NetMQ 4.0.4.5 binds for `ipc://NAME`: its IpcAddress.Resolve, which takes
    Strings.GetStableHashCode(name) (two djb2-like hashes over alternate UTF-16 code units, in
    32-bit arithmetic), its absolute value, modulo 55536, plus 10000."""
    def i32(x):
        return (x + 2**31) % 2**32 - 2**31

    data = name.encode("utf-16-le")
    units = [int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data), 2)]
    even = odd = 5381
    for i, unit in enumerate(units):
        if i % 2 == 0:
            even = i32(i32((even << 5) + even) ^ unit)
        else:
            odd = i32(i32((odd << 5) + odd) ^ unit)
    number = i32(even + i32(odd * 1566083941))
    number = i32(-number) if number < 0 else number
    return int(math.fmod(number, 55536)) + 10000  # C#'s remainder keeps the dividend's sign


def free(port):
    """Whether a TCP listener could bind 127.0.0.1:`port` now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def bound_names(spec, roles, registry):
    """(role, index, flag) of every endpoint the cell's roles bind over ipc, when a NetMQ language
    is among `roles` (role -> languages); none otherwise (libzmq's Unix sockets need no port)."""
    if not any(UNIX_IPC in registry[lang].lacks for langs in roles.values() for lang in langs):
        return []
    return [(role.name, index, flag) for role in spec.roles for index in range(len(roles[role.name]))
            for flag, value in role.flags.items() if value == WILDCARD and flag not in spec.tcp_only]


def endpoints(spec, role, index, flags, ipc):
    """`flags` with every wildcard tcp endpoint that the cell's transport replaces: over ipc, a
    binding role's `tcp://127.0.0.1:*` becomes its own path, but for flags that stay tcp (a page a
    browser reads)."""
    if ipc is None:
        return flags
    return {name: ipc.endpoint(role, index, name) if value == WILDCARD and name not in spec.tcp_only else value
            for name, value in flags.items()}


def unsupported(transport, langs, registry, runner):
    """Why a cell of these languages cannot run over `transport` with `runner`, or None. The reason
    names the registry's two kinds of ipc, not the cell's languages: one line under a grid says it
    for every such cell."""
    if transport == "tcp":
        return None
    lacking = sorted(lang for lang in langs if UNIX_IPC in registry[lang].lacks)
    if not lacking:
        return None
    reason = registry[lacking[0]].lacks[UNIX_IPC]
    if set(langs) - set(lacking):
        unix = [name for name in registry.names() if UNIX_IPC not in registry[name].lacks]
        tcp = [name for name in registry.names() if UNIX_IPC in registry[name].lacks]
        return (f"over ipc, a Unix domain socket ({', '.join(unix)}) never meets NetMQ's loopback TCP "
                f"({', '.join(tcp)}): {reason}")
    if runner == "docker":
        return f"over ipc in containers: {reason}, and every container has a loopback of its own"
    return None


def note(transport, langs, registry):
    """What "ipc" was in a cell whose every language lacks Unix sockets (NetMQ's TCP), or None."""
    lacking = [lang for lang in langs if UNIX_IPC in registry[lang].lacks]
    if transport == "ipc" and lacking and len(lacking) == len(set(langs)):
        return f"ipc here is not a Unix socket: {registry[lacking[0]].lacks[UNIX_IPC]}"
    return None

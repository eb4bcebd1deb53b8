"""Topologies: namespaces, taps, veths, bridges and addresses, built and torn down as one unit.

A topology is TOML (or the same structure as Python data)::

    prefix = "demo"                     # prepended to every namespace and link name

    [netns.red]                         # namespaces, by name
    [netns.blue]

    [bridge.br0]
    netns = "blue"
    ports = ["vred-br"]                 # links of this topology, in the bridge's namespace

    [veth.vred]
    netns = "red"
    peer = "vred-br"
    peer_netns = "blue"
    addresses = ["10.77.0.1/24"]

    [tap.tap0]
    netns = "red"
    queues = 2
    vnet_hdr = true

    [vxlan.overlay]                     # a VXLAN port (tapengine.vxlan), usable in [engine]
    vni = 42
    local = "192.0.2.1"                 # the underlay address to bind
    remotes = ["192.0.2.2"]             # head-end replication targets
    fdb = ["02:00:00:00:00:02=192.0.2.3"]   # static entries, MAC=VTEP
    dstport = 4789                      # default; 8472 for the kernel's default and flannel
    netns = "red"                       # the underlay namespace (default: where it runs)

    [engine]
    ports = ["tap0", "tap1"]            # the taps (and VXLAN ports) the engine serves
    mode = "wire"                       # or "switch" (2 to 64 ports); default "wire"

Everything is checked before anything is made, so a bad description changes nothing and the error
names the file, the line (when it can be found) and the key path. ``up()`` records an undo step
*before* each creation and, if any step fails or SIGINT/SIGTERM arrives, replays the undo steps in
reverse before re-raising. ``down()`` removes everything the description names that tapengine
created (it marks what it creates: ``tapengine.marks``) and refuses, changing nothing, if a name
belongs to anything else. SIGKILL cannot be caught: after one, ``tapengine cleanup --prefix
PREFIX`` (``tapengine.cleanup.cleanup_prefix``) removes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tapengine import cleanup, devices, tun
from tapengine.engine import MAX_SWITCH_PORTS, Port, open_port
from tapengine.errors import (
    DeviceNotFoundError,
    InvalidNameError,
    InvalidValueError,
    TapengineError,
    TopologyError,
)
from tapengine.netns import (
    create_netns,
    netns_exists,
    run_in_netns,
)
from tapengine.signals import stop_signals
from tapengine.validate import (
    MAX_TAP_QUEUES,
    check_cidr,
    check_id,
    check_ifname,
    check_int,
    check_ip,
    check_mac,
    check_mtu,
    check_netns_name,
    read_text_file,
)
from tapengine.vxlan import IANA_PORT, MAX_VNI, VxlanPort, check_tap_mtu, open_vxlan_port, parse_fdb

# -- the description -------------------------------------------------------------------------


@dataclass
class LinkSpec:
    """One link to create: a tap/tun, one end of a veth pair, or a bridge (names are final)."""

    kind: str  # "tap", "veth" or "bridge"
    key: str  # the name in the description, for error messages
    name: str
    netns: str | None
    mtu: int | None = None
    mac: str | None = None
    addresses: list[str] = field(default_factory=list)
    up: bool = True
    # tap
    mode: str = "tap"
    queues: int = 1
    vnet_hdr: bool = False
    owner: int | None = None
    group: int | None = None
    # veth
    peer: LinkSpec | None = None
    # bridge
    stp: bool = False
    ports: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VxlanEnginePort:
    """A ``[vxlan.NAME]`` port of the engine: opened with ``open_vxlan_port`` in ``netns``."""

    name: str
    netns: str | None
    vni: int
    local: str
    remotes: list[str]
    fdb: list[tuple[str, str]]
    dstport: int = IANA_PORT
    mode: str = "tap"
    queues: int = 1
    vnet_hdr: bool = False

    def open(self) -> VxlanPort:
        return open_vxlan_port(self.vni, self.local, self.remotes, dstport=self.dstport,
                               fdb=self.fdb, netns=self.netns, name=self.name)


@dataclass(frozen=True)
class EnginePort:
    """A device the engine serves: open its queues with ``open_queues()``."""

    name: str
    netns: str | None
    mode: str
    queues: int
    vnet_hdr: bool

    def open(self) -> Port:
        """An engine ``Port`` on all queues of the device, opened from inside its namespace
        (with offloads if the device has a virtio-net header); its txqueuelen is raised for the
        engine and not given back: the device goes with the topology."""
        return run_in_netns(
            self.netns, open_port, self.name, mode=self.mode, queues=self.queues,
            offload=self.vnet_hdr,
        )  # fmt: skip

    def open_queues(self) -> list[tun.TunQueue]:
        """Open all queues of the device, from inside its namespace (a tun fd resolves names in
        the namespace it was opened in); the fds work from any thread afterwards."""
        if self.queues > 1:
            return run_in_netns(
                self.netns, tun.open_queues, self.name, self.queues, self.mode,  # type: ignore[arg-type]
                vnet_hdr=self.vnet_hdr,
            )  # fmt: skip
        queue = run_in_netns(
            self.netns, tun.open_queue, self.name, self.mode, vnet_hdr=self.vnet_hdr  # type: ignore[arg-type]
        )
        return [queue]


_COMMON_KEYS = {"netns", "mtu", "mac", "addresses", "up"}
_KEYS = {
    "tap": _COMMON_KEYS | {"mode", "queues", "vnet_hdr", "owner", "group"},
    "veth": _COMMON_KEYS
    | {"peer", "peer_netns", "peer_mtu", "peer_mac", "peer_addresses", "peer_up"},
    "bridge": _COMMON_KEYS | {"stp", "ports"},
}
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list of strings"}
_TOP_KEYS = {"prefix", "netns", "tap", "veth", "bridge", "vxlan", "engine"}
_VXLAN_KEYS = {"vni", "local", "remotes", "fdb", "dstport", "netns"}
_ENGINE_KEYS = {"ports", "mode"}


#: Engine modes a topology can ask for, with the number of ports each serves.
ENGINE_MODES = {"wire": (2, 2), "switch": (2, MAX_SWITCH_PORTS)}


class _Reader:
    """Checks one description and turns it into specs; every error names the key path."""

    def __init__(self, data: Any, source: str, text: str | None, prefix: str | None) -> None:
        self.source = source
        self.text = text
        self.data = data
        self.prefix_override = prefix

    def error(self, path: tuple[str, ...], message: str) -> TopologyError:
        return TopologyError(
            message, source=self.source, key=".".join(path), line=_line_of(self.text, path)
        )

    def table(self, value: Any, path: tuple[str, ...], allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(
                    (*path, str(key)),
                    f"unknown key{suggestion}; expected one of: {', '.join(sorted(allowed))}",
                )
        return value

    def section(self, value: Any, path: tuple[str, ...]) -> dict[str, Any]:
        """A table of named entries (``[tap.NAME]``): any keys, each naming something."""
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table of named entries, got {type(value).__name__}")
        return value

    def typed(self, table: dict[str, Any], path: tuple[str, ...], key: str, kind: type,
              default: Any = None) -> Any:  # fmt: skip
        if key not in table:
            return default
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list:
            ok = ok and all(isinstance(item, str) for item in value)
        if not ok:
            expected = _TYPE_NAMES[kind]
            raise self.error((*path, key), f"expected {expected}, got {value!r}")
        return value

    def read(self) -> tuple[str, list[str], list[LinkSpec], list[EnginePort | VxlanEnginePort],
                            str]:
        top = self.table(self.data, (), _TOP_KEYS)
        prefix = self.typed(top, (), "prefix", str, "")
        if self.prefix_override is not None:
            prefix = self.prefix_override
        self.prefix = prefix

        namespaces = self.read_namespaces(top.get("netns", {}))
        specs: list[LinkSpec] = []
        for kind in ("bridge", "tap", "veth"):
            for key, value in self.section(top.get(kind, {}), (kind,)).items():
                specs.append(self.read_link(kind, str(key), value, namespaces))
        self.check_unique(specs)
        self.check_ports(specs)
        self.vxlans = {str(key): self.read_vxlan(str(key), value, namespaces)
                       for key, value in self.section(top.get("vxlan", {}), ("vxlan",)).items()}
        engine, mode = self.read_engine(top.get("engine", {}), specs)
        final_namespaces = [self.final(ns, ("netns", ns), netns=True) for ns in namespaces]
        return prefix, final_namespaces, specs, engine, mode

    def final(self, name: str, path: tuple[str, ...], *, netns: bool = False) -> str:
        """``prefix + name``, checked as a namespace or interface name."""
        full = self.prefix + name
        try:
            if netns:
                check_netns_name(full)
            else:
                check_ifname(full)
        except InvalidNameError as err:
            raise self.error(path, str(err)) from None
        return full

    def read_namespaces(self, value: Any) -> list[str]:
        if isinstance(value, list):
            names = [self.typed({"netns": value}, (), "netns", list)][0]
        else:
            section = self.section(value, ("netns",))
            for name, settings in section.items():
                self.table(settings, ("netns", name), set())
            names = list(section)
        for name in names:
            self.final(name, ("netns", name), netns=True)
        if len(set(names)) != len(names):
            raise self.error(("netns",), "a namespace is listed twice")
        return names

    def netns_ref(self, table: dict[str, Any], path: tuple[str, ...], key: str,
                  namespaces: list[str]) -> str | None:  # fmt: skip
        name = self.typed(table, path, key, str)
        if name is None:
            return None
        if name not in namespaces:
            defined = ", ".join(namespaces) or "none"
            raise self.error(
                (*path, key),
                f"namespace {name!r} is not defined in this topology (defined: {defined})",
            )
        return self.prefix + name

    def settings(self, spec: LinkSpec, table: dict[str, Any], path: tuple[str, ...],
                 prefix: str = "") -> None:  # fmt: skip
        """mtu, mac, addresses and up (``peer_*`` for a veth's peer), checked now."""
        mtu = self.typed(table, path, prefix + "mtu", int)
        mac = self.typed(table, path, prefix + "mac", str)
        addresses = self.typed(table, path, prefix + "addresses", list, [])
        try:
            spec.mtu = None if mtu is None else check_mtu(mtu)
        except ValueError as err:
            raise self.error((*path, prefix + "mtu"), str(err)) from None
        try:
            spec.mac = None if mac is None else check_mac(mac)
        except ValueError as err:
            raise self.error((*path, prefix + "mac"), str(err)) from None
        for address in addresses:
            try:
                check_cidr(address)
            except ValueError as err:
                raise self.error((*path, prefix + "addresses"), str(err)) from None
        spec.addresses = list(addresses)
        spec.up = self.typed(table, path, prefix + "up", bool, True)

    def read_link(self, kind: str, key: str, value: Any, namespaces: list[str]) -> LinkSpec:
        path = (kind, key)
        table = self.table(value, path, _KEYS[kind])
        spec = LinkSpec(
            kind=kind,
            key=key,
            name=self.final(key, path),
            netns=self.netns_ref(table, path, "netns", namespaces),
        )
        self.settings(spec, table, path)
        if kind == "tap":
            spec.mode = self.typed(table, path, "mode", str, "tap")
            if spec.mode not in ("tap", "tun"):
                raise self.error((*path, "mode"), f"expected 'tap' or 'tun', got {spec.mode!r}")
            spec.queues = self.typed(table, path, "queues", int, 1)
            if not 1 <= spec.queues <= MAX_TAP_QUEUES:
                raise self.error(
                    (*path, "queues"), f"expected 1 to {MAX_TAP_QUEUES}, got {spec.queues}"
                )
            spec.vnet_hdr = self.typed(table, path, "vnet_hdr", bool, False)
            for ident in ("owner", "group"):
                value = self.typed(table, path, ident, int)
                if value is not None:
                    try:
                        check_id(value, ident)
                    except ValueError as err:
                        raise self.error((*path, ident), str(err)) from None
                setattr(spec, ident, value)
        elif kind == "veth":
            peer_key = self.typed(table, path, "peer", str)
            if peer_key is None:
                raise self.error((*path, "peer"), "a veth needs a peer name")
            peer_netns = self.netns_ref(table, path, "peer_netns", namespaces)
            spec.peer = LinkSpec(
                kind="veth",
                key=peer_key,
                name=self.final(peer_key, (*path, "peer")),
                netns=spec.netns if "peer_netns" not in table else peer_netns,
            )
            self.settings(spec.peer, table, path, prefix="peer_")
        elif kind == "bridge":
            spec.stp = self.typed(table, path, "stp", bool, False)
            spec.ports = self.typed(table, path, "ports", list, [])
        return spec

    def check_unique(self, specs: list[LinkSpec]) -> None:
        seen: dict[tuple[str | None, str], tuple[str, ...]] = {}
        for spec in _all_links(specs):
            path = (spec.kind, spec.key)
            where = (spec.netns, spec.name)
            if where in seen:
                raise self.error(
                    path, f"link name {spec.key!r} is used twice in the same namespace "
                    f"(first at {'.'.join(seen[where])})",
                )  # fmt: skip
            seen[where] = path

    def check_ports(self, specs: list[LinkSpec]) -> None:
        by_key = {spec.key: spec for spec in _all_links(specs)}
        attached: dict[str, str] = {}
        for bridge in (spec for spec in specs if spec.kind == "bridge"):
            path = ("bridge", bridge.key, "ports")
            for port in bridge.ports:
                target = by_key.get(port)
                if target is None:
                    raise self.error(path, f"port {port!r} is not a link of this topology")
                if target is bridge or target.kind == "bridge":
                    raise self.error(path, f"port {port!r} is a bridge; ports are taps or veths")
                if target.netns != bridge.netns:
                    raise self.error(
                        path,
                        f"port {port!r} is in namespace {target.netns!r} but the bridge is in "
                        f"{bridge.netns!r}; a port must be in its bridge's namespace",
                    )
                if port in attached:
                    raise self.error(path, f"port {port!r} is already a port of {attached[port]!r}")
                attached[port] = bridge.key

    def read_vxlan(self, key: str, value: Any, namespaces: list[str]) -> VxlanEnginePort:
        path = ("vxlan", key)
        table = self.table(value, path, _VXLAN_KEYS)
        for required in ("vni", "local"):
            if required not in table:
                raise self.error(path, f"a VXLAN port needs {required!r}")
        try:
            vni = check_int(self.typed(table, path, "vni", int), "VNI", 0, MAX_VNI)
            dstport = check_int(self.typed(table, path, "dstport", int, IANA_PORT),
                                "VXLAN port", 1, 65535)
            local = str(check_ip(self.typed(table, path, "local", str)))
            remotes = [str(check_ip(r)) for r in self.typed(table, path, "remotes", list, [])]
            fdb = [parse_fdb(entry) for entry in self.typed(table, path, "fdb", list, [])]
        except InvalidValueError as err:
            raise self.error(path, str(err)) from None
        if not remotes and not fdb:
            raise self.error(path, "a VXLAN port needs 'remotes' or 'fdb' entries to talk to")
        netns = self.netns_ref(table, path, "netns", namespaces)
        return VxlanEnginePort(key, netns, vni, local, remotes, fdb, dstport)

    def read_engine(self, value: Any, specs: list[LinkSpec]
                    ) -> tuple[list[EnginePort | VxlanEnginePort], str]:  # fmt: skip
        table = self.table(value, ("engine",), _ENGINE_KEYS)
        mode = self.typed(table, ("engine",), "mode", str, "wire")
        if mode not in ENGINE_MODES:
            raise self.error(("engine", "mode"), f"expected 'wire' or 'switch', got {mode!r}")
        taps = {spec.key: spec for spec in specs if spec.kind == "tap"}
        ports: list[EnginePort | VxlanEnginePort] = []
        for name in self.typed(table, ("engine",), "ports", list, []):
            if name in self.vxlans:
                ports.append(self.vxlans[name])
                continue
            spec = taps.get(name)
            if spec is None:
                raise self.error(
                    ("engine", "ports"), f"{name!r} is not a tap of this topology; the engine "
                    f"serves taps and VXLAN ports (defined: "
                    f"{', '.join([*taps, *self.vxlans]) or 'none'})",
                )  # fmt: skip
            ports.append(EnginePort(spec.name, spec.netns, spec.mode, spec.queues, spec.vnet_hdr))
        low, high = ENGINE_MODES[mode]
        if ports and not low <= len(ports) <= high:
            raise self.error(
                ("engine", "ports"),
                f"a {mode} serves {low} to {high} ports, not {len(ports)}",
            )
        if mode == "switch" and any(port.mode == "tun" for port in ports):
            raise self.error(("engine", "mode"), "a switch forwards Ethernet frames: taps only")
        if len({port.mode for port in ports}) > 1:
            raise self.error(("engine", "ports"), "the engine joins taps or tuns, not both")
        return ports, mode


def _all_links(specs: list[LinkSpec]) -> Iterator[LinkSpec]:
    for spec in specs:
        yield spec
        if spec.peer is not None:
            yield spec.peer


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in dotted.split("."))


def _line_of(text: str | None, path: tuple[str, ...]) -> int | None:
    """The 1-based line defining ``path`` in TOML ``text``: best effort, ``None`` if not found."""
    if not text or not path:
        return None
    best: int | None = None
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_RE.match(line)
        if header:
            table = _split_key(header.group(1))
            if table == path:
                return number
            if path[: len(table)] == table and best is None:
                best = number
            continue
        key = _KEY_RE.match(line)
        if key:
            full = table + _split_key(key.group(1))
            if path[: len(full)] == full:
                return number
    return best


def _undo_netns(name: str) -> None:
    """Remove namespace ``name`` if we made it: a creation that failed because someone else's
    namespace has that name must not take theirs with it."""
    target = cleanup.inspect_netns(name)
    if target is not None and target.ours:
        cleanup.remove(target)


def _undo_link(spec: LinkSpec) -> None:
    target = cleanup.inspect_link(spec.name, spec.netns)
    if target is not None and target.ours:
        cleanup.remove(target)


# -- building --------------------------------------------------------------------------------


class Topology:
    """A checked description that ``up()`` builds and ``down()`` removes, each as one unit."""

    def __init__(
        self,
        prefix: str,
        namespaces: list[str],
        links: list[LinkSpec],
        engine_ports: list[EnginePort | VxlanEnginePort],
        *,
        source: str = "<dict>",
        engine_mode: str = "wire",
    ) -> None:
        self.prefix = prefix
        self.namespaces = namespaces
        self.links = links
        self.engine_ports = engine_ports
        self.engine_mode = engine_mode
        self.source = source
        self._undo: list[Callable[[], None]] = []

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str = "<dict>", prefix: str | None = None,
        text: str | None = None,
    ) -> Topology:  # fmt: skip
        """Check ``data`` and build a ``Topology``; ``prefix`` overrides the one in ``data``."""
        reader = _Reader(data, source, text, prefix)
        final_prefix, namespaces, links, engine, mode = reader.read()
        return cls(final_prefix, namespaces, links, engine, source=source, engine_mode=mode)

    @classmethod
    def from_file(cls, path: str | Path, *, prefix: str | None = None) -> Topology:
        """Read a TOML topology; errors name the file, line and key path.

        The file must be a regular file of at most 1 MiB of UTF-8 (a FIFO or a device is refused
        without being read: ``InvalidValueError``); nesting too deep for the parser is refused
        with a ``TopologyError``, not a ``RecursionError``.
        """
        source = os.fspath(path)
        text = read_text_file(path, "topology file")  # its errors name the file
        try:
            data = tomllib.loads(text)
            return cls.from_dict(data, source=source, prefix=prefix, text=text)
        except tomllib.TOMLDecodeError as err:
            match = re.search(r"line (\d+)", str(err))
            raise TopologyError(
                f"not valid TOML: {err}", source=source,
                line=int(match.group(1)) if match else None,
            ) from None  # fmt: skip
        except RecursionError:
            raise TopologyError(
                "nested too deeply to read (arrays or tables inside each other hundreds of "
                "levels deep): a topology needs only a few levels", source=source,
            ) from None  # fmt: skip

    # -- what exists -------------------------------------------------------------------------

    def all_links(self) -> list[LinkSpec]:
        return list(_all_links(self.links))

    def existing(self) -> list[str]:
        """Namespaces and links of this description that exist now (``"ns"`` or ``"ns/link"``)."""
        found = [ns for ns in self.namespaces if netns_exists(ns)]
        for spec in self.all_links():
            if spec.netns is not None and not netns_exists(spec.netns):
                continue
            with contextlib.suppress(DeviceNotFoundError):
                devices.get_link(spec.name, spec.netns)
                found.append(f"{spec.netns}/{spec.name}" if spec.netns else spec.name)
        return found

    def open_engine_ports(self) -> list[Port | VxlanPort]:
        """Open every port of the ``[engine]`` section (see ``EnginePort.open``); all or none.
        A tap whose MTU does not fit a VXLAN port's underlay is refused (``check_tap_mtu``)."""
        ports: list[Port | VxlanPort] = []
        try:
            for engine_port in self.engine_ports:
                ports.append(engine_port.open())
            for vxlan in [port for port in ports if isinstance(port, VxlanPort)]:
                vxlan.coalesce_toward([port for port in ports if isinstance(port, Port)])
                for port in ports:
                    if isinstance(port, Port) and port.mtu is not None:
                        check_tap_mtu(vxlan, port.name, port.mtu)
        except BaseException:
            for port in ports:
                port.close()
            raise
        return ports

    # -- up and down -------------------------------------------------------------------------

    def up(self) -> None:
        """Build everything, or nothing: on any failure or signal, undo and re-raise."""
        with stop_signals("raise"):
            clashes = self.existing()
            if clashes:
                hint = f"'tapengine cleanup --prefix {self.prefix}'" if self.prefix else "down()"
                raise TopologyError(
                    f"already exists: {', '.join(clashes)} (remove it first, e.g. with {hint})",
                    source=self.source,
                )
            try:
                self._build()
            except BaseException:
                self._rollback()
                raise

    def _step(self, undo: Callable[[], None] | None, action: Callable[[], object]) -> None:
        """Run one creation step with its undo recorded first, signals held until it is done.

        A step is never cut in half (pyroute2 creates a namespace in a child process that would
        otherwise finish after our rollback); a signal that arrived meanwhile is raised right
        after, between steps, where the undo log is exact.
        """
        with stop_signals("defer"):
            if undo is not None:
                self._undo.append(undo)
            action()

    def _build(self) -> None:
        self._undo.clear()
        for ns in self.namespaces:
            self._step(lambda ns=ns: _undo_netns(ns), lambda ns=ns: create_netns(ns))
        for spec in self.links:
            self._step(lambda s=spec: _undo_link(s), lambda s=spec: self._create(s))
        for spec in self.all_links():
            self._step(None, lambda s=spec: self._configure(s))
        for bridge in (spec for spec in self.links if spec.kind == "bridge"):
            for port in bridge.ports:
                self._step(
                    None,
                    lambda b=bridge, p=port: devices.get_bridge(b.name, b.netns).attach(
                        self.prefix + p
                    ),
                )
        for spec in self.all_links():
            if spec.up:
                self._step(None, lambda s=spec: devices.get_link(s.name, s.netns).up())

    @staticmethod
    def _create(spec: LinkSpec) -> None:
        # The Links returned own nothing here: ownership lives in the undo log.
        if spec.kind == "bridge":
            devices.create_bridge(spec.name, netns=spec.netns, stp=spec.stp).owned = False
        elif spec.kind == "tap":
            devices.create_tap(
                spec.name, mode=spec.mode, queues=spec.queues, vnet_hdr=spec.vnet_hdr,
                owner=spec.owner, group=spec.group, netns=spec.netns,
            ).owned = False  # fmt: skip
        else:
            assert spec.peer is not None
            devices.create_veth(
                spec.name, spec.peer.name, netns=spec.netns, peer_netns=spec.peer.netns
            ).owned = False

    def _configure(self, spec: LinkSpec) -> None:
        link = devices.get_link(spec.name, spec.netns)
        if spec.mtu is not None:
            link.set_mtu(spec.mtu)
        if spec.mac is not None:
            link.set_mac(spec.mac)
        for address in spec.addresses:
            link.add_address(address, nodad=True)

    def _rollback(self) -> None:
        with stop_signals("defer"):
            while self._undo:
                undo = self._undo.pop()
                with contextlib.suppress(Exception):
                    undo()

    def removal_plan(self) -> list[cleanup.Target]:
        """What ``down()`` would remove, as it exists now: the namespaces of this description and
        the links outside them (links inside go with their namespace)."""
        targets = [t for ns in reversed(self.namespaces) if (t := cleanup.inspect_netns(ns))]
        for spec in reversed(self.all_links()):
            if spec.netns is None:
                expected = spec.mode if spec.kind == "tap" else spec.kind
                if target := cleanup.inspect_link(spec.name, None, expected):
                    targets.insert(0, target)
        return targets

    def down(self, *, force: bool = False) -> list[str]:
        """Remove every link and namespace this description names that exists; returns them.

        Only what tapengine created, with the kind the description declares, is removed: if
        anything else has one of these names the whole request is refused (``NotOwnedError``)
        and nothing is removed, unless ``force`` (see ``tapengine.cleanup``).
        """
        with stop_signals("defer"):
            self._undo.clear()
            plan = self.removal_plan()
            cleanup.check_plan(plan, force=force, what=f"to take down {self.source}")
            errors: list[str] = []
            for target in plan:
                try:
                    cleanup.remove(target)
                except OSError as err:
                    errors.append(str(err))
            if errors:
                raise TapengineError("topology down left things behind: " + "; ".join(errors))
            return [target.label for target in plan]

    def __enter__(self) -> Self:
        self._handlers = stop_signals("raise")
        self._handlers.__enter__()
        try:
            self.up()
        except BaseException:
            self._handlers.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.down()
        finally:
            self._handlers.__exit__(None, None, None)

    def describe(self) -> dict[str, Any]:
        """What this topology builds, as plain data (for ``--json`` and logs)."""
        return {
            "source": self.source,
            "prefix": self.prefix,
            "netns": self.namespaces,
            "links": [
                {"name": s.name, "kind": s.kind, "netns": s.netns, "addresses": s.addresses}
                for s in self.all_links()
            ],
            "engine_ports": [dataclasses.asdict(port) for port in self.engine_ports],
            "engine_mode": self.engine_mode,
        }

"""Every check a value gets before it reaches the kernel, in one place.

Names, MAC and IP addresses, MTUs, ids, counts, durations, rates and files all enter tapengine
through the command line, topology files or the Python API; each is checked here *before*
anything on the machine changes, and a refused value raises ``InvalidNameError`` or
``InvalidValueError`` (both ``ValueError``) with a message that names the value, the rule it
breaks and, where it helps, an example of a good one.

This module imports nothing of tapengine but ``errors``: everything else may use it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat

from tapengine.errors import InvalidNameError, InvalidValueError

IFNAMSIZ = 16  # kernel buffer for interface names, NUL included
NETNS_NAME_MAX = 255  # a file name in /run/netns
MIN_MTU, MAX_MTU = 68, 65535  # 68: the IPv4 minimum; 65535: what tun and veth accept at most
MAX_TAP_QUEUES = 256  # the kernel's MAX_TAP_QUEUES
MAX_ID = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "none" to the kernel
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
MAX_TXQUEUELEN = MAX_U32  # IFLA_TXQLEN is a u32
#: Longest number text read at all: a value with more digits is refused before it is converted.
MAX_NUMBER_TEXT = 40
MAX_TOPOLOGY_BYTES = 1 << 20  # a topology file larger than 1 MiB is not a topology file
#: Longest text quoted back in an error message, so a huge value cannot flood the terminal.
QUOTE_LIMIT = 60

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Decimal only: no "nan", "inf", hex floats or underscores.
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def quote(value: object) -> str:
    """``repr(value)``, shortened to ``QUOTE_LIMIT`` characters for error messages."""
    text = repr(value)
    if len(text) > QUOTE_LIMIT:
        text = f"{text[: QUOTE_LIMIT - 12]}... ({len(text)} chars)"
    return text


def quote_path(path: str, limit: int = 2 * QUOTE_LIMIT) -> str:
    """``repr(path)``, shortened from the front (the file's own name is at the end)."""
    text = repr(path)
    if len(text) > limit:
        text = f"'...{text[-(limit - 4):]}"
    return text


# -- names -----------------------------------------------------------------------------------


def _name_problem(name: str, limit: int) -> str | None:
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if not name:
        return "it is empty"
    if len(encoded) > limit:
        return f"it is {len(encoded)} bytes long; the limit is {limit}"
    if name in (".", ".."):
        return "it is a path component"
    if "\0" in name:
        return "it contains a NUL byte"
    if "/" in name:
        return "it contains '/'"
    if any(ch.isspace() for ch in name):
        return "it contains whitespace"
    return None


def check_ifname(name: object, what: str = "interface") -> str:
    """Return ``name`` if the kernel would accept it as an interface name, else raise.

    Refuses empty names, names over 15 bytes, ``.`` and ``..``, names that are not valid UTF-8,
    and names containing ``/``, ``:``, whitespace or NUL — before any syscall is made.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} name must be a str, not {type(name).__name__}")
    problem = _name_problem(name, IFNAMSIZ - 1)
    if problem is None and ":" in name and what == "interface":
        problem = "it contains ':'"
    if problem:
        raise InvalidNameError(f"invalid {what} name {quote(name)}: {problem}")
    return name


def check_netns_name(name: object) -> str:
    """Return ``name`` if it can name a namespace file in ``/run/netns``, else raise."""
    if not isinstance(name, str):
        raise InvalidNameError(f"namespace name must be a str, not {type(name).__name__}")
    problem = _name_problem(name, NETNS_NAME_MAX)
    if problem:
        raise InvalidNameError(f"invalid namespace name {quote(name)}: {problem}")
    return name


def check_prefix(prefix: object, *, min_length: int = 2) -> str:
    """A name prefix for ``cleanup``: ``min_length`` or more characters of a valid name."""
    if not isinstance(prefix, str) or len(prefix) < min_length:
        raise InvalidValueError(
            f"refusing prefix {quote(prefix)}: it must be at least {min_length} characters, "
            "or it would match devices that are not yours"
        )
    problem = _name_problem(prefix, IFNAMSIZ - 1)
    if problem:
        raise InvalidValueError(f"refusing prefix {quote(prefix)}: {problem}")
    return prefix


# -- link settings ---------------------------------------------------------------------------


def check_mac(mac: object) -> str:
    """A unicast, non-zero MAC address as ``aa:bb:cc:dd:ee:ff``, lower case; else raise."""
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise InvalidValueError(
            f"invalid MAC address {quote(mac)}: expected six hex pairs like 02:00:00:00:00:01"
        )
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise InvalidValueError(
            f"invalid MAC address {mac!r}: it is multicast (lowest bit of the first byte set)"
        )
    if mac == "00:00:00:00:00:00":
        raise InvalidValueError("invalid MAC address '00:00:00:00:00:00': it is all zeros")
    return mac


def parse_mac(text: object) -> bytes:
    """``02:77:00:00:00:01`` (or with ``-``) -> 6 bytes; any MAC, multicast included."""
    if isinstance(text, str):
        candidate = text.replace("-", ":")
        if _MAC_RE.fullmatch(candidate):
            return bytes.fromhex(candidate.replace(":", ""))
    raise InvalidValueError(
        f"invalid MAC address {quote(text)}: use six hex bytes, like 02:77:00:00:00:01"
    )


def format_mac(mac: bytes) -> str:
    """6 bytes -> ``02:77:00:00:00:01``."""
    return ":".join(f"{byte:02x}" for byte in mac)


def check_mtu(mtu: object) -> int:
    return check_int(mtu, "MTU", MIN_MTU, MAX_MTU)


def check_cidr(cidr: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with prefix length, ``10.77.0.1/24`` or ``fd77::1/64``; else raise.

    A scoped IPv6 address (``fe80::1%eth0/64``) is refused: the link it is added to is its scope.
    """
    if not isinstance(cidr, str) or "/" not in cidr:
        raise InvalidValueError(
            f"invalid address {quote(cidr)}: expected an address with prefix length, "
            "like 10.77.0.1/24"
        )
    if "%" in cidr:
        raise InvalidValueError(
            f"invalid address {quote(cidr)}: a scope (%...) is not allowed; the link the "
            "address is added to is its scope"
        )
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as err:
        raise InvalidValueError(f"invalid address {quote(cidr)}: {err}") from None


def check_ip(ip: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, str) and "%" not in ip:
        try:
            return ipaddress.ip_address(ip)
        except ValueError:
            pass
    raise InvalidValueError(f"invalid IP address {quote(ip)}")


MAX_PORT = 65535

#: ``ADDRESS:PORT`` with an IPv4 address, or ``[ADDRESS]:PORT`` with an IPv6 one.
_ENDPOINT_RE = re.compile(r"\[(?P<v6>[^\]]*)\]:(?P<port6>[^:]*)|(?P<v4>[^:\[\]]*):(?P<port4>[^:]*)")


def check_port(port: object, what: str = "UDP port", *, allow_zero: bool = False) -> int:
    """A UDP/TCP port number: 1 to 65535 (0 too with ``allow_zero``: the kernel picks one)."""
    return check_int(port, what, 0 if allow_zero else 1, MAX_PORT)


def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The compressed text of ``address``; an IPv4-mapped IPv6 address keeps its IPv4 part
    dotted (``::ffff:10.77.0.2``, as the kernel and ``ip`` show it; Python before 3.13 wrote
    ``::ffff:a4d:2``, which no one recognises in a message)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def check_endpoint(endpoint: object, what: str = "address", *,
                   allow_zero_port: bool = False) -> tuple[str, int]:  # fmt: skip
    """An IP address and port, as text (``10.77.0.1:4000``, ``[fd77::1]:4000``: IPv6 in
    brackets) or as a ``(host, port)`` tuple; returns ``(address, port)`` with the address in
    its compressed form. No host names (nothing is looked up) and no IPv6 scope."""
    if isinstance(endpoint, tuple) and len(endpoint) == 2:
        host, port = endpoint
        try:
            address = check_ip(host)
        except InvalidValueError:
            raise InvalidValueError(f"invalid {what} {quote(host)}: not an IP address") from None
        return _address_text(address), check_port(port, f"{what} port",
                                                   allow_zero=allow_zero_port)
    if not isinstance(endpoint, str):
        raise InvalidValueError(
            f"invalid {what} {quote(endpoint)}: expected ADDRESS:PORT, like 10.77.0.1:4000 or "
            "[fd77::1]:4000"
        )
    match = _ENDPOINT_RE.fullmatch(endpoint.strip())
    if match is None:
        hint = (" (an IPv6 address goes in brackets: [fd77::1]:4000)"
                if endpoint.count(":") > 1 else "")
        raise InvalidValueError(
            f"invalid {what} {quote(endpoint)}: expected ADDRESS:PORT, like 10.77.0.1:4000 or "
            f"[fd77::1]:4000{hint}"
        )
    bracketed = match["v6"] is not None
    host = match["v6"] if bracketed else match["v4"]
    port_text = match["port6"] if bracketed else match["port4"]
    problem = None
    try:
        address = check_ip(host)
    except InvalidValueError:
        problem = (f"{quote(host)} is not an IP address (host names are not looked up"
                   + (", and an IPv6 scope (%...) is not supported)" if "%" in host else ")"))
    else:
        if bracketed != (address.version == 6):
            problem = "only an IPv6 address goes in brackets"
    low = 0 if allow_zero_port else 1
    if problem is None and not (re.fullmatch(r"[0-9]{1,5}", port_text)
                                and low <= int(port_text) <= MAX_PORT):
        problem = f"the port must be a number from {low} to {MAX_PORT}"
    if problem:
        raise InvalidValueError(f"invalid {what} {quote(endpoint)}: {problem}")
    return _address_text(address), int(port_text)


def format_endpoint(endpoint: tuple[str, int]) -> str:
    """``("fd77::1", 4000)`` -> ``[fd77::1]:4000``, ``("10.77.0.1", 4000)`` ->
    ``10.77.0.1:4000``: the text ``check_endpoint`` reads."""
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_id(value: object, what: str) -> int:
    """A uid or gid the kernel can store (0 to 2^32-2)."""
    return check_int(value, what, 0, MAX_ID)


# -- numbers ---------------------------------------------------------------------------------


def check_int(value: object, what: str, low: int, high: int) -> int:
    """An ``int`` (not a bool) from ``low`` to ``high``; else raise naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValueError(
            f"invalid {what} {quote(value)}: expected an integer from {low} to {high}"
        )
    return value


def check_float(
    value: object,
    what: str,
    *,
    low: float = 0.0,
    high: float = 1e9,
    low_inclusive: bool = False,
) -> float:
    """A finite number in ``(low, high]`` (``[low, high]`` with ``low_inclusive``); NaN and
    infinity are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(f"invalid {what} {quote(value)}: expected a number")
    number = float(value)
    above = number >= low if low_inclusive else number > low
    if not math.isfinite(number) or not above or number > high:
        bound = "from" if low_inclusive else "above"
        raise InvalidValueError(
            f"invalid {what} {quote(value)}: expected a finite number {bound} {low:g} "
            f"up to {high:g}"
        )
    return number


def parse_int(text: object, what: str, low: int, high: int) -> int:
    """An integer written in decimal (``"42"``, ``" -1 "``) from ``low`` to ``high``; else raise.

    Text longer than ``MAX_NUMBER_TEXT`` characters is refused before conversion.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return check_int(text, what, low, high)
    stripped = text.strip() if isinstance(text, str) else ""
    if len(stripped) > MAX_NUMBER_TEXT or not _INT_RE.fullmatch(stripped):
        raise InvalidValueError(
            f"invalid {what} {quote(text)}: expected an integer from {low} to {high}"
        )
    return check_int(int(stripped), what, low, high)


def parse_float(
    text: object,
    what: str,
    *,
    low: float = 0.0,
    high: float = 1e9,
    low_inclusive: bool = False,
) -> float:
    """A finite decimal number (``"2"``, ``"0.5"``, ``"1e-3"``) in the range ``check_float``
    takes; NaN, infinity and text longer than ``MAX_NUMBER_TEXT`` characters are refused."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return check_float(text, what, low=low, high=high, low_inclusive=low_inclusive)
    stripped = text.strip() if isinstance(text, str) else ""
    number: float | None = None
    if len(stripped) <= MAX_NUMBER_TEXT and _FLOAT_RE.fullmatch(stripped):
        number = float(stripped)
    if number is None:
        bound = "from" if low_inclusive else "above"
        raise InvalidValueError(
            f"invalid {what} {quote(text)}: expected a number {bound} {low:g} up to {high:g}"
        )
    return check_float(number, what, low=low, high=high, low_inclusive=low_inclusive)


# -- files -----------------------------------------------------------------------------------


def read_text_file(path: str | os.PathLike[str], what: str, *,
                   limit: int = MAX_TOPOLOGY_BYTES) -> str:  # fmt: skip
    """The UTF-8 text of a regular file of at most ``limit`` bytes; anything else is refused
    without blocking (a FIFO or a device is never opened for reading)."""
    name = os.fspath(path)
    if not name:
        raise InvalidValueError(f"invalid {what} path '': expected a file name")
    shown = quote_path(name)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise InvalidValueError(f"{what} {shown} does not exist") from None
    except OSError as err:
        raise InvalidValueError(f"cannot read {what} {shown}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InvalidValueError(f"cannot read {what} {shown}: it is {kind}")
    if info.st_size > limit:
        raise InvalidValueError(
            f"cannot read {what} {shown}: it is {info.st_size} bytes; the limit is {limit}"
        )
    try:
        with open(name, "rb") as file:
            data = file.read(limit + 1)
    except OSError as err:
        raise InvalidValueError(f"cannot read {what} {shown}: {err.strerror}") from None
    if len(data) > limit:
        raise InvalidValueError(f"cannot read {what} {shown}: it is over {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidValueError(
            f"cannot read {what} {shown}: it is not UTF-8 text (byte {err.start})"
        ) from None


__all__ = [
    "MAX_ID",
    "MAX_MTU",
    "MAX_NUMBER_TEXT",
    "MAX_PORT",
    "MAX_TAP_QUEUES",
    "MAX_TXQUEUELEN",
    "MAX_U32",
    "MAX_U64",
    "MIN_MTU",
    "check_cidr",
    "check_endpoint",
    "check_float",
    "check_id",
    "check_ifname",
    "check_int",
    "check_ip",
    "check_mac",
    "check_mtu",
    "check_netns_name",
    "check_port",
    "check_prefix",
    "format_endpoint",
    "format_mac",
    "parse_float",
    "parse_int",
    "parse_mac",
    "quote",
    "quote_path",
    "read_text_file",
]

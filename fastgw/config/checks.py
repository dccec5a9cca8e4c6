"""Value checks shared by the config sections: names that become metric labels, header-name tokens,
"host:port" addresses, CIDR blocks and files. Each check says why a value is refused; the caller puts the
key path in front.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NAME = re.compile(r"[A-Za-z0-9_.-]+")            # route/upstream/consumer/plan names: they become metric labels
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # RFC 9110 §5.6.2 token
HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def parse_hostport(text: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into (host, port), raising ValueError with the reason.

    The host may be an IPv4 address, a bracketed IPv6 address or a DNS name. Port 0 (an ephemeral port
    chosen by the kernel) is only meaningful for a listener.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError('expected "[ipv6]:port", e.g. "[::1]:8080"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError('missing port, expected "host:port", e.g. "127.0.0.1:8080"')
        if ":" in host:
            raise ValueError('an IPv6 address must be in brackets, e.g. "[::1]:8080"')
        if not host:
            raise ValueError('missing host, expected "host:port" (use "0.0.0.0:PORT" for every IPv4 address)')
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f'"{host}" is not an IPv4 address') from None
        elif not HOSTNAME.fullmatch(host.lower()):
            raise ValueError(f'"{host}" is not a valid host name')
    if not port.isascii() or not port.isdigit() or len(port) > 5:
        raise ValueError(f'port "{port}" is not a number')
    number = int(port)
    if number > 65535 or (number == 0 and not allow_port_zero):
        raise ValueError(f"port {number} is out of range (1-65535)")
    return host, number


class ConfigWarning(str):
    """A finding that does not stop the config from loading: it is usable, but probably not what was
    meant. A check appends it to its errors list like an error; loading sorts the two apart."""


def check_reference(name: str, known: dict, key: str, section: str, errors: list[str]) -> bool:
    """A route's reference to a named table ([section.NAME]): an error naming the known ones when there is
    none of that name. True when it resolves."""
    if name in known:
        return True
    errors.append(f"{key}: no [{section}.{name}] (known: {', '.join(sorted(known)) or 'none'})")
    return False


def check_cidrs(values: list[str], path: str, errors: list[str]) -> None:
    for i, v in enumerate(values):
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            errors.append(f'{path}[{i}]: "{v}" is not an IP address or CIDR block (e.g. "10.0.0.0/8", "2001:db8::/32")')
            continue
        # "10.1.2.3/8" means 10.0.0.0/8, which is rarely what its writer had in mind (a /32 typed as a
        # /8, or a host address where the network was meant). Accepted as the network, like iptables.
        if "/" in v and str(net) != v and net.network_address != ipaddress.ip_interface(v).ip:
            errors.append(ConfigWarning(f'{path}[{i}]: "{v}" has host bits set: it means {net} '
                                        f"(write {net}, or the address alone for one host)"))


def check_file(value: str, path: str, errors: list[str]) -> None:
    if not Path(value).is_file():
        errors.append(f'{path}: cannot read "{value}": no such file')



def route_settings(routes: list[Any], key: str, get: Callable[[Any], Any]) -> Iterator[tuple[str, Any, Any]]:
    """(key path, value, route) of every route whose routes[].`key` (`get(route)`) is set, for a policy's
    check."""
    for i, r in enumerate(routes):
        value = get(r)
        if value is not None:
            yield f"routes[{i}].{key}", value, r

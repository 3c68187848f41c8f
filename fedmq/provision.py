"""``fedmq init gateway DIR`` and ``fedmq init device ID --gateway DIR``: a working fleet
from commands, not from hand-edited files.

A gateway directory holds the broker config (logins, ACL, TLS on), its Argon2
password file, the aggregator config with its MQTT password file, the dashboard config
with its read-only MQTT login, the aggregator's keys, a CA and server certificate, and
one bundle per device under ``devices/``
(agent config with the pinned keys, the CA certificate and the device's MQTT
password). The device's signing key is made on the device; ``fedmq enroll
--from-file`` takes the ``id,public_key`` lines the devices print.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template

import msgspec

from fedmq.data_sample import DEFAULT, FleetColumns, data_toml, read_columns
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.server import RECOMMENDED, recommended_keys
from fedmq.protocol.topics import check_name
from fedmq.runtime.files import write_atomic, write_text_atomic

RECORD = "gateway.json"  # what `init device` needs to know about the gateway
LOOPBACK = "127.0.0.1"
# The read-only login of `fedmq dashboard` (broker.toml's dashboard_users, dashboard.toml).
DASHBOARD_USER = "dashboard"
# Logins init gateway makes for the gateway's own roles: never a device id.
RESERVED_LOGINS = ("aggregator", DASHBOARD_USER)


@dataclass(frozen=True)
class Gateway:
    fleet: str
    port: int
    device_host: str  # the address devices connect to (a SAN of the server certificate)
    # The devices' [data] columns (from --data-sample), so init device writes them too.
    features: tuple[str, ...] = DEFAULT.features
    label: str = DEFAULT.label
    delimiter: str = DEFAULT.delimiter
    # Every device's [privacy] max_quorum (None in a record older than the key).
    max_quorum: int | None = None
    # The trustees holding the key's shares (init gateway --trustees), if any.
    trustees: tuple[str, ...] = ()


KEY_LINE = 'private_key_file = "state/paillier.key"     # made by fedmq init, mode 0600: back it up'
TRUSTEES_LINE = ('trustees_file = "state/trustees.json"      # the key is split among trustees: '
                 'no private key here')
MAX_TRUSTEES = 16


def majority(trustees: int) -> int:
    return trustees // 2 + 1


def check_trustees(trustees: int, threshold: int, where: str = "init gateway") -> None:
    """A majority of k, and at least 2: one trustee alone must never decrypt, and two
    disjoint groups of trustees must never both decrypt (each keeps its own ledger, so two
    disjoint quorums could each allow one of two sets whose difference is one device)."""
    if not 2 <= trustees <= MAX_TRUSTEES:
        raise ConfigError(f"{where}: --trustees {trustees} is not in 2..{MAX_TRUSTEES}")
    low = max(2, majority(trustees))
    if not low <= threshold <= trustees:
        raise ConfigError(f"{where}: --threshold {threshold} is not in {low}..{trustees}: "
                          "a decryption needs a majority of the trustees, and at least 2 (one "
                          "trustee alone, or two disjoint groups of them, could otherwise "
                          "decrypt what the others refuse)")


def max_quorum_for(devices: int) -> int:
    """The announced DP quorum above which a device of a fleet of ``devices`` refuses.

    An honest gateway never needs a quorum above the fleet's size (a round closes only
    with that many updates); twice it leaves room for the fleet to double before the
    devices made first must be told, and still refuses a gateway that sizes each noise
    share for a fleet far larger than the real one.
    """
    return 2 * max(1, devices)


# `fedmq init gateway`'s [server] step per model kind (protocol.server.RECOMMENDED, from
# `fedmq bench-noniid`). The code's default stays "fedavg": a config without [server] keeps
# plain FedAvg.
SERVER_DEFAULTS = {kind: recommended_keys(kind) for kind in RECOMMENDED}
_SERVER_WHY = {
    "logistic": (
        "# FedAdam at server_lr 0.2, the most robust for classifiers in `fedmq bench-noniid`\n"
        "# (8 devices, 3 seeds; wine, iris, breast_cancer, synthetic; pathological, Dirichlet\n"
        "# 0.1/0.5, feature and quantity skew): 0.9 pp short of centralized over rounds 20-25 on\n"
        "# average (worst fleet 4.8), within 1 pp by round 25 on 8/20 fleets; plain FedAvg 3.3\n"
        "# (worst 12.3), 3/20 (docs/benchmarks.md, \"Non-IID fleets\").\n"),
    "linear": (
        "# FedAvgM at momentum 0.7 for a regression in `fedmq bench-noniid` (raw diabetes, 8\n"
        "# devices, 3 seeds, 5 skews): within R^2 0.02 of centralized by round 25 on 5/5 fleets,\n"
        "# plain FedAvg 3/5; FedAdam (the classifiers' choice) was worse here: 3.6 R^2 points\n"
        "# short against FedAvg's 1.1 (docs/benchmarks.md, \"Non-IID fleets\").\n"),
}


def server_toml(kind: str) -> dict[str, str]:
    """The aggregator template's [server] lines for a model ``kind`` ("logistic"/"linear")."""
    chosen = SERVER_DEFAULTS[kind]
    lines = _SERVER_WHY[kind] + "".join(
        f"{key} = {json.dumps(chosen[key])}\n" for key in ("optimizer", "server_lr"))
    momentum = (f"momentum = {json.dumps(chosen['momentum'])}\n" if "momentum" in chosen
                else "# momentum = 0.9          # fedavgm\n")
    return {"server": lines, "momentum_line": momentum}


def _template(name: str, **values: object) -> str:
    text = (resources.files("fedmq") / "templates" / name).read_text(encoding="utf-8")
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def _device_ids(devices: str | None, count: int | None) -> list[str]:
    if devices and count is not None:
        raise ConfigError("init gateway: use --devices or --device-count, not both")
    ids = [d.strip() for d in devices.split(",") if d.strip()] if devices else [
        f"dev-{i:03d}" for i in range(count or 0)]
    for device in ids:
        _check_device_id(device)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"init gateway: --devices names a device twice: {devices}")
    return ids


def _check_device_id(device: str) -> None:
    check_name(device, "device id")
    if device in RESERVED_LOGINS:
        raise ConfigError(f"init: {device!r} is the {device}'s login, not a device id")


def _hosts(sans: Sequence[str], loopback: bool, host: str | None) -> tuple[str, str]:
    """(listen address, address devices connect to)."""
    names = [s.partition(":")[2] for s in sans]
    device_host = LOOPBACK if loopback or not names else names[0]
    local = loopback or all(n in ("localhost", "::1") or n.startswith("127.") for n in names)
    return host or (LOOPBACK if local else "0.0.0.0"), device_host


def port_in_use(host: str, port: int) -> bool:
    """True if a server already listens on ``host:port`` (the broker could not bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the broker binds (asyncio sets SO_REUSEADDR): a closed port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE  # EACCES (port < 1024) is for run time
    return False


def init_gateway(directory: Path, *, fleet: str, sans: Sequence[str], port: int,
                 devices: Sequence[str], bits: int, rounds: int, loopback: bool = False,
                 host: str | None = None, columns: FleetColumns = DEFAULT,
                 trustees: int = 0, threshold: int = 0) -> list[str]:
    """Write a gateway directory; return the lines to show the operator.

    ``trustees`` > 0: deal the Paillier key ``threshold``-of-``trustees`` (fedmq.ceremony);
    the gateway then gets the public key and verification keys only.
    """
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.keys import load_aggregator_keys
    from fedmq.broker.certs import make_tls, parse_san
    from fedmq.broker.passwords import add_users, new_password

    check_name(fleet, "fleet name")
    for flag, value, low, high in (("--port", port, 1, 65535), ("--bits", bits, 512, 8192),
                                   ("--rounds", rounds, 1, 1_000_000)):
        if not low <= value <= high:
            raise ConfigError(f"init gateway: {flag} {value} is not in {low}..{high}")
    if threshold and not trustees:
        raise ConfigError("init gateway: --threshold goes with --trustees K")
    if trustees or threshold:
        check_trustees(trustees, threshold)
    for san in sans:
        parse_san(san)  # a typo stops us before anything is written
    taken = [p for p in ("broker.toml", "aggregator.toml", "dashboard.toml", "passwords.txt",
                         RECORD)
             if (directory / p).exists()]
    if taken:
        raise ConfigError(f"{directory / taken[0]} exists: init gateway makes a new gateway "
                          f"(add devices with: fedmq init device ID --gateway {directory})")
    listen, device_host = _hosts(sans, loopback, host)
    trustee_ids = tuple(f"trustee-{i}" for i in range(1, trustees + 1))
    gateway = Gateway(fleet=fleet, port=port, device_host=device_host,
                      features=columns.features, label=columns.label,
                      delimiter=columns.delimiter, max_quorum=max_quorum_for(len(devices)),
                      trustees=trustee_ids)
    tls = make_tls(directory / "tls", fleet, sans)
    all_sans = ", ".join(dict.fromkeys(["IP:127.0.0.1", "DNS:localhost", *sans]))
    broker_toml = _template("broker.toml", host=listen, port=port, fleet=fleet, sans=all_sans)
    write_text_atomic(directory / "broker.toml", broker_toml.replace(
        "trustee_users = []", f"trustee_users = {json.dumps(list(trustee_ids))}"))
    password, dashboard_password = new_password(), new_password()
    write_text_atomic(directory / "aggregator.password", password + "\n", private=True)
    write_text_atomic(directory / "dashboard.password", dashboard_password + "\n",
                      private=True)
    add_users(directory / "passwords.txt",
              {"aggregator": password, DASHBOARD_USER: dashboard_password})
    aggregator_toml = _template(
        "aggregator.toml", fleet=fleet, port=port, bits=bits, rounds=rounds,
        quorum=max(1, (len(devices) + 1) // 2), min_agents=max(1, len(devices)),
        **columns.toml(), **server_toml(columns.kind))
    if trustees:
        aggregator_toml = aggregator_toml.replace(KEY_LINE, TRUSTEES_LINE)
    write_text_atomic(directory / "aggregator.toml", aggregator_toml)
    dealt: list[str] = []
    if trustees:
        from fedmq.ceremony import deal_trustees
        dealt = deal_trustees(directory, gateway, bits=bits, threshold=threshold)
    # The aggregator's keys now, so every device bundle (and the dashboard) pins them.
    _, signer = load_aggregator_keys(AggregatorConfig.from_file(directory / "aggregator.toml"))
    # The dashboard runs on the gateway beside the aggregator: the same broker address and CA.
    write_text_atomic(directory / "dashboard.toml", _template(
        "dashboard.toml", fleet=fleet, host=LOOPBACK, port=port,
        aggregator_signing_key=signer.public_hex))
    write_text_atomic(directory / RECORD, json.dumps(asdict(gateway), indent=2) + "\n")
    made = add_devices(directory, devices)
    # A warning, not an error: the old broker may be stopped before this one starts. But the
    # try-out hangs quietly if another broker holds the port (agents retry its TLS for ever).
    busy = [f"note: {listen}:{port} is in use now (another broker?): fedmq broker cannot "
            f"start until it is free; or make the gateway again with another --port"
            ] if port_in_use(listen, port) else []
    said = columns.describe() if columns is not DEFAULT else []
    return [*said, f"gateway {directory}: broker.toml (TLS, logins, ACL on {listen}:{port}), "
            f"aggregator.toml, dashboard.toml (read-only login {DASHBOARD_USER!r}), "
            f"passwords.txt, CA {tls.ca_cert} (key 0600, stays here), "
            f"server certificate for {all_sans}",
            *dealt,
            *made,
            f"devices connect to {device_host}:{port}; copy each devices/<id>/ to its device",
            *busy]


def _load_gateway(directory: Path) -> Gateway:
    path = directory / RECORD
    try:
        gateway = msgspec.json.decode(path.read_bytes(), type=Gateway)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is {directory} made by fedmq init gateway?") \
            from None
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path}: not a fedmq gateway record ({exc})") from None
    if not gateway.features or "" in gateway.features or not gateway.label \
            or len(gateway.delimiter) != 1 or (gateway.max_quorum or 1) < 1:
        raise ConfigError(f"{path}: not a fedmq gateway record (features, label or delimiter "
                          "empty, or max_quorum below 1)")
    return gateway


def add_devices(directory: Path, devices: Sequence[str]) -> list[str]:
    """A login in passwords.txt and a bundle under devices/<id>/ for each device."""
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.keys import load_aggregator_keys
    from fedmq.broker.passwords import add_users, new_password
    from fedmq.protocol.crypto.paillier import fingerprint

    if not devices:
        return []
    gateway = _load_gateway(directory)
    for device in devices:
        _check_device_id(device)
        if (directory / "devices" / device).exists():
            raise ConfigError(f"{directory / 'devices' / device} exists: device {device!r} is "
                              f"already provisioned")
    (public, _), signer = load_aggregator_keys(
        AggregatorConfig.from_file(directory / "aggregator.toml"))
    ca = (directory / "tls" / "ca.crt").read_bytes()
    max_quorum = gateway.max_quorum or max_quorum_for(
        len(set(_bundles(directory)) | set(devices)))
    passwords = {device: new_password() for device in devices}
    add_users(directory / "passwords.txt", passwords)
    for device, password in passwords.items():
        bundle = directory / "devices" / device
        write_atomic(bundle / "ca.crt", ca)
        write_text_atomic(bundle / "mqtt.password", password + "\n", private=True)
        write_text_atomic(bundle / "agent.toml", _template(
            "agent.toml", id=device, fleet=gateway.fleet, port=gateway.port,
            device_host=gateway.device_host, key_fingerprint=fingerprint(public),
            aggregator_signing_key=signer.public_hex, max_quorum=max_quorum,
            **data_toml(gateway.features, gateway.label, gateway.delimiter)))
    return [f"device {d}: login added to passwords.txt, bundle {directory / 'devices' / d}"
            for d in devices]


def _bundles(directory: Path) -> list[str]:
    """The devices provisioned so far (their bundles under devices/)."""
    folder = directory / "devices"
    return [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def cmd_init(args: argparse.Namespace) -> int:
    if args.what == "gateway":
        columns = DEFAULT
        if args.data_sample:
            if not args.label:
                raise ConfigError("init gateway --data-sample needs --label COLUMN: the column "
                                  "the fleet learns to predict")
            columns = read_columns(Path(args.data_sample), args.label,
                                   delimiter=args.delimiter, kind=args.kind,
                                   n_classes=args.n_classes, exclude=args.exclude)
        elif given := _column_options(args):
            raise ConfigError(f"init gateway: {given} {'goes' if ',' not in given else 'go'} "
                              "with --data-sample FILE.csv")
        lines = init_gateway(
            Path(args.target), fleet=args.fleet, sans=args.san, port=args.port,
            devices=_device_ids(args.devices, args.device_count), bits=args.bits,
            rounds=args.rounds, loopback=args.loopback, host=args.host, columns=columns,
            trustees=args.trustees,
            threshold=args.threshold or (majority(args.trustees) if args.trustees else 0))
    else:
        if not args.gateway:
            raise ConfigError("init device needs --gateway DIR (made by fedmq init gateway)")
        if args.data_sample or _column_options(args):
            raise ConfigError("init device takes the gateway's columns (its gateway.json); "
                              "--data-sample, --label, --kind, --n-classes and --exclude go "
                              "with init gateway")
        lines = add_devices(Path(args.gateway), [args.target])
        lines.append("restart the broker so it reads the new login")
    print("\n".join(lines))
    return 0


def _column_options(args: argparse.Namespace) -> str:
    """The --data-sample companions given on the command line, as they were typed."""
    given = {"--label": args.label, "--kind": args.kind, "--exclude": args.exclude,
             "--n-classes": args.n_classes, "--delimiter": args.delimiter != ","}
    return ", ".join(flag for flag, value in given.items() if value not in (None, [], False))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init", help="provision a gateway directory or one more device",
        description="init gateway DIR: broker, aggregator, CA and server certificate, "
        "logins and a bundle per device under DIR/devices/. init device ID --gateway DIR: "
        "one more device (login + bundle).")
    p.add_argument("what", choices=["gateway", "device"])
    p.add_argument("target", metavar="DIR|ID", help="gateway directory, or the new device id")
    g = p.add_argument_group("init gateway")
    g.add_argument("--fleet", default="demo", help="fleet name (default: demo)")
    g.add_argument("--san", action="append", default=[], metavar="IP:ADDR|DNS:NAME",
                   help="the gateway's address on the devices' network, repeatable; the first "
                   "is what devices connect to (IP:127.0.0.1 and DNS:localhost are always in)")
    g.add_argument("--port", type=int, default=8883, help="broker TLS port (default: 8883)")
    g.add_argument("--devices", metavar="ID,ID,...", help="device ids")
    g.add_argument("--device-count", type=int, metavar="N", help="devices dev-000 ... dev-N-1")
    g.add_argument("--bits", type=int, default=2048, help="Paillier key size (default: 2048)")
    g.add_argument("--trustees", type=int, default=0, metavar="K",
                   help="split the key among K trustees (threshold decryption); this command "
                   "then acts as the dealer: run it offline, see docs/security.md")
    g.add_argument("--threshold", type=int, default=0, metavar="T",
                   help="with --trustees: how many trustees must take part in a decryption "
                   "(2..K; default: a majority)")
    g.add_argument("--rounds", type=int, default=10, help="training rounds (default: 10)")
    g.add_argument("--loopback", action="store_true",
                   help="one-machine try-out: broker and devices on 127.0.0.1 (the default "
                   "without --san)")
    g.add_argument("--host", help="broker listen address (default: 0.0.0.0 with --san, else "
                   "127.0.0.1)")
    d = p.add_argument_group(
        "the fleet's columns (init gateway; without them, those of fedmq sample-data)")
    d.add_argument("--data-sample", metavar="FILE.csv", help="a CSV with the devices' header "
                   "(and a few rows): its numeric columns become the features of the "
                   "aggregator's [model] and of every device's [data]")
    d.add_argument("--label", metavar="COLUMN", help="the column to predict")
    d.add_argument("--kind", choices=["logistic", "linear"], help="the model (default: "
                   "logistic when the label holds class numbers 0, 1, ..., else linear)")
    d.add_argument("--n-classes", type=int, metavar="N", help="classes of a classifier "
                   "(default: the largest class number in the sample, plus one)")
    d.add_argument("--exclude", action="append", default=[], metavar="COL[,COL...]",
                   help="numeric columns that are not features (a time, a row number, a "
                   "device id); repeatable, and a name that holds a comma is taken whole")
    d.add_argument("--delimiter", default=",", help="the CSV's separator, one character "
                   "(default: ,; \\t or tab for a tab)")
    p.add_argument("--gateway", metavar="DIR", help="init device: the gateway directory")
    p.set_defaults(func=cmd_init)

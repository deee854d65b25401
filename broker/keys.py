"""``keepa-fleet keys``: create CURVE key pairs for a broker on a non-loopback address."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common.curve import BROKER_NAME, CLIENT_NAME, create_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        required=True,
        metavar="DIR",
        help="where the keys go (then set broker.curve_dir / FLEET_BROKER_CURVE_DIR to it)",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="create and authorize a client key pair NAME (repeatable; "
        f"default: one named '{CLIENT_NAME}', also installed as this "
        "directory's own client key)",
    )


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    names = args.client or [CLIENT_NAME]
    for path in create_keys(root, names):
        print(f"created {path}")
    own = root / f"{CLIENT_NAME}.key_secret"
    if not own.exists():
        shutil.copyfile(root / "clients" / f"{names[0]}.key_secret", own)
        print(f"installed {own} (this machine's workers and status tool use it)")
    print(
        f"give {root / (BROKER_NAME + '.key')} and a clients/NAME.key_secret (as "
        f"{CLIENT_NAME}.key_secret) to each remote worker host"
    )
    return 0

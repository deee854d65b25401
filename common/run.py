"""Placeholder: the owner of this subcommand replaces this module."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"{__name__}: not built yet")

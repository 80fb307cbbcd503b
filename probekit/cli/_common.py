"""Options shared by several subcommands, defined once."""

from __future__ import annotations

import argparse


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None, help="feature-store folder (default: $PROBEKIT_CACHE or ./cache)")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="folder holding on-disk datasets (default: $PROBEKIT_DATA or ./data)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")

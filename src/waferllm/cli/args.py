"""What every subcommand shares: the one-line argument errors, --device/--set/--no-limits, --compile-cache.

Subcommand modules import these from here (not from the package), so the package's main() can import
them without an import circle.
"""

from __future__ import annotations

import argparse

from waferllm import WaferError


class ArgError(WaferError):
    """Bad command-line arguments."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D401
        raise ArgError(f"{self.prog}: {message}")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device NAME|FILE, --set FIELD=VALUE (repeatable), --no-limits."""
    p.add_argument("--device", default="wse2", help="preset (wse2, wse3) or a .json/.toml device file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one device field, e.g. --set sram_bytes_per_core=1048576")
    p.add_argument("--no-limits", action="store_true", help="report SRAM/route excess instead of stopping")


def device_from_args(args):
    from waferllm.spec import load_device

    return load_device(args.device, args.set)


COMPILE_CACHE_HELP = ("where compiled JAX programs are kept between runs (default: $XDG_CACHE_HOME/waferllm/jax, "
                      "~/.cache/waferllm/jax), or 'off'")


def add_compile_cache_arg(p: argparse.ArgumentParser, top: bool) -> None:
    """--compile-cache DIR|off, before or after the subcommand (the subcommand's copy only overrides when given)."""
    p.add_argument("--compile-cache", metavar="DIR|off", help=COMPILE_CACHE_HELP,
                   default=None if top else argparse.SUPPRESS)

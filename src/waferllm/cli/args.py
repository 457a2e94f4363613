"""What every subcommand shares: the one-line argument errors, --device/--set/--no-limits, --compile-cache,
--checkpoint-cache (the commands that load a checkpoint).

Subcommand modules import these from here (not from the package), so the package's main() can import
them without an import circle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model and --checkpoint-cache DIR|off, for commands that load a checkpoint's weights."""
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a .gguf file or a Hugging Face folder")
    p.add_argument("--checkpoint-cache", metavar="DIR|off", default=None,
                   help="where GGUF checkpoints are kept once converted, so later loads skip dequantising "
                        "(default: $XDG_CACHE_HOME/waferllm/checkpoints, ~/.cache/waferllm/checkpoints), or 'off'")


def load_model_from_args(args):
    """(config, weights, tokenizer) of --model, through the checkpoint cache unless --checkpoint-cache off."""
    from waferllm.model import load_model
    from waferllm.model.cache import OFF, default_checkpoint_cache_dir

    where = args.checkpoint_cache
    if where == OFF:
        return load_model(args.model)
    if where is None:  # the default folder is a convenience: when it cannot be written, loads are just slower
        return load_model(args.model, cache_dir=default_checkpoint_cache_dir())
    folder = Path(where).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgError(f"cannot use {where!r} as the checkpoint cache: {e.strerror or e}; give a writable "
                       "folder or 'off'") from None
    return load_model(args.model, cache_dir=folder)

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
    """Bad command-line arguments; `prog` ('waferllm predict') names the command when argparse found them."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class OutputError(WaferError):
    """A result that cannot be written as asked (e.g. a non-finite number in JSON): a bug, not bad input."""

    exit_code = 1


def flags_given(args) -> set[str]:
    """The --flags the user typed (main() keeps argv on args; abbreviations are off, so these are exact)."""
    return {tok.split("=", 1)[0] for tok in getattr(args, "argv", ()) if tok.startswith("--")}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage dump) and exit code 2; no abbreviated flags (an
    abbreviation would hide which flag was given, see flags_given)."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message: str):  # noqa: D401
        raise ArgError(message, prog=self.prog)


def error_line(err: WaferError) -> str:
    """The one stderr line of a user error: 'waferllm predict: error: ...' (or 'waferllm: error: ...')."""
    text = " ".join(str(err).split("\n"))  # one line, whatever the message holds
    return f"{getattr(err, 'prog', None) or 'waferllm'}: error: {text}"


def json_text(obj, indent: int | None = 2) -> str:
    """`obj` as strict JSON (no NaN or Infinity, which JSON does not have), built whole before anything is
    printed or written; OutputError (one line) when a number is not finite."""
    import json

    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as e:
        raise OutputError(f"the result holds a non-finite number (NaN or infinity), which JSON cannot carry ({e}); "
                          "check the inputs' figures") from None


def check_utf8_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """ArgError '--prompt is not valid UTF-8' for a value Python decoded with surrogateescape (bytes that are
    not UTF-8 reach sys.argv as lone surrogates, which no tokenizer, JSON or terminal takes)."""
    names = {}
    for p in _parsers(parser, args):
        for a in p._actions:
            names.setdefault(a.dest, a.option_strings[-1] if a.option_strings else a.dest)
    for dest, value in vars(args).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str) and _not_utf8(v):
                raise ArgError(f"{names.get(dest, dest)} is not valid UTF-8")


def _parsers(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The parser and the subcommand parser `args` came through."""
    out = [parser]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            sub = a.choices.get(getattr(args, a.dest, None) or "")
            if sub is not None:
                out += _parsers(sub, args)
    return out


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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

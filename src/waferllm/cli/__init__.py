"""The `waferllm` command: argparse -> typed config -> a command; user errors are one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from waferllm import WaferError


class ArgError(WaferError):
    """Bad command-line arguments."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D401
        raise ArgError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    from waferllm.cli import bench, compare, generate, predict, report, serve, sweep, validate

    p = Parser(prog="waferllm", description="Wafer-scale LLM inference on a simulated PLMR mesh.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    bench.add_parser(sub)
    compare.add_parser(sub)
    generate.add_parser(sub)
    predict.add_parser(sub)
    report.add_parser(sub)
    serve.add_parser(sub)
    sweep.add_parser(sub)
    validate.add_parsers(sub)
    return p


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device NAME|FILE, --set FIELD=VALUE (repeatable), --no-limits."""
    p.add_argument("--device", default="wse2", help="preset (wse2, wse3) or a .json/.toml device file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one device field, e.g. --set sram_bytes_per_core=1048576")
    p.add_argument("--no-limits", action="store_true", help="report SRAM/route excess instead of stopping")


def device_from_args(args):
    from waferllm.spec import load_device

    return load_device(args.device, args.set)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except WaferError as e:
        print(f"waferllm: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("waferllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

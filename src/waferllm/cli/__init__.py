"""The `waferllm` command: argparse -> typed config -> a command; user errors are one line, exit 2."""

from __future__ import annotations

import sys

from waferllm import WaferError
from waferllm.cli.args import (ArgError, Parser, add_compile_cache_arg, add_device_args, check_utf8_args,
                               device_from_args, error_line)

__all__ = ["ArgError", "Parser", "add_device_args", "build_parser", "device_from_args", "main"]


def build_parser() -> Parser:
    from waferllm.cli import bench, compare, explore, generate, predict, report, serve, sweep, validate

    p = Parser(prog="waferllm", description="Wafer-scale LLM inference on a simulated PLMR mesh.")
    add_compile_cache_arg(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    bench.add_parser(sub)
    compare.add_parser(sub)
    explore.add_parser(sub)
    generate.add_parser(sub)
    predict.add_parser(sub)
    report.add_parser(sub)
    serve.add_parser(sub)
    sweep.add_parser(sub)
    validate.add_parsers(sub)
    for cmd in dict.fromkeys(sub.choices.values()):  # every subcommand also takes it after its name
        add_compile_cache_arg(cmd, top=False)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # to start the same command again (--num-processes)
        check_utf8_args(parser, args)
        from waferllm.engine.compile_cache import enable_compile_cache

        enable_compile_cache(args.compile_cache)  # once, here: every command (serve too) compiles at most once
        return int(args.func(args) or 0)
    except WaferError as e:
        print(error_line(e), file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("waferllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

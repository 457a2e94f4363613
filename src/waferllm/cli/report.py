"""`waferllm report --out DIR`: an HTML page with PNG figures that opens in a browser without a server."""

from __future__ import annotations

import time
from pathlib import Path

from waferllm.cli.args import ArgError, add_device_args, device_from_args, json_text


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report (paper tables, sweep, breakdown, heat map, GPUs, "
                                      "validation: every published figure against its prediction) with PNG figures")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and the PNGs (created; "
                                                                "only the report's own files are replaced)")
    p.add_argument("--model", default="llama3-8b", help="model of the sweep, breakdown, heat map and GPU sections")
    add_device_args(p)
    p.add_argument("--dtype", default="float16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", action="store_true", help="print the list of files written")
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    """One-line errors for an --out that cannot become a folder, before any work."""
    if out.exists() and not out.is_dir():
        raise ArgError(f"--out {str(out)!r} exists and is not a folder")
    for parent in out.resolve().parents:  # the first existing ancestor must be a writable folder
        if parent.exists():
            if not parent.is_dir():
                raise ArgError(f"--out {str(out)!r}: {str(parent)!r} is not a folder")
            break


def run(args) -> int:
    from rich.progress import Progress

    from waferllm.model import get_config
    from waferllm.report.html import FILES, build_report

    from waferllm.cli.predict import no_limits_error

    no_limits_error(args, "report")
    out = Path(args.out)
    _check_out(out)
    spec = device_from_args(args)
    get_config(args.model)  # unknown models fail here in one line, before the minutes of work
    t0 = time.perf_counter()
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("report", total=1)
        try:
            index = build_report(out, args.model, spec, args.dtype,
                                 progress=lambda d, n, what: prog.update(task, completed=d, total=n, description=what))
        except OSError as e:  # e.g. no permission to write next to --out
            raise ArgError(f"cannot write the report to {str(out)!r}: {e.strerror or e}") from None
    files = [str(out / f) for f in FILES]
    if args.json:
        print(json_text(files))
        return 0
    print(f"wrote {index} and {len(files) - 1} PNGs in {time.perf_counter() - t0:.1f} s; open it in a browser:")
    print(f"  file://{index.resolve()}")
    return 0

"""`waferllm sweep` and `waferllm report`: the autotuner's table, the paper tables, the HTML page and its render."""

import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from waferllm.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chromium-headless-shell")
VOID = {"img", "br", "meta", "link", "hr", "input", "col", "wbr"}


def _run(capsys, *argv):
    """(exit code, stdout, stderr) of the CLI run in this process (one JAX import for the whole file)."""
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sweep_json_sorted_with_best(capsys):
    rc, out, err = _run(capsys, "sweep", "--model", "llama3-8b", "--phase", "decode", "--sides", "480,240,360",
                        "--json")
    assert rc == 0, err
    (res,) = json.loads(out)["results"]
    sides = [p["side"] for p in res["points"]]
    assert sides == [240, 360, 480]
    assert res["best"] in sides and sum(p["best"] for p in res["points"]) == 1
    ok = [p for p in res["points"] if p["tokens_per_s"]]
    b = next(p for p in res["points"] if p["best"])
    fewest = min(p["wafers"] for p in ok)  # autotune.best: fastest among the fewest wafers
    assert b["wafers"] == fewest and b["tokens_per_s"] == max(p["tokens_per_s"] for p in ok if p["wafers"] == fewest)


def test_sweep_past_the_context_warns_and_sweeps(capsys):
    """A cache past the model's context is one warning line on stderr; the sweep still runs (shape-only)."""
    rc, out, err = _run(capsys, "sweep", "--model", "llama2-13b", "--phase", "decode", "--context", "5000", "--sides",
                        "480", "--json")
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning: 5000 tokens is beyond llama2-13b's context of 4096" in lines[0], err
    (res,) = json.loads(out)["results"]
    assert res["points"][0]["tokens_per_s"] > 0


def test_sweep_table_and_plot(capsys, tmp_path):
    png = tmp_path / "sweep.png"
    rc, out, err = _run(capsys, "sweep", "--model", "llama3-8b,codellama-34b", "--phase", "decode", "--sides",
                        "360,480", "--plot", str(png))
    assert rc == 0, err
    assert "| model" in out and "tokens/s" in out and "codellama-34b" in out and "*" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_paper_json_fast(capsys):
    t0 = time.perf_counter()
    rc, out, err = _run(capsys, "sweep", "--paper", "--json")
    wall = time.perf_counter() - t0
    print(f"sweep --paper --json: {wall:.1f} s wall in-process (target < 10 s on the 2-core box)")
    assert rc == 0, err
    pt = json.loads(out)
    assert list(pt["models"]) == ["llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b"]
    for name, m in pt["models"].items():
        assert [r["side"] for r in m["prefill"]] == [480, 600, 720]
        assert [r["side"] for r in m["decode"]] == [420, 540, 660]
        assert all(r["tokens_per_s"] for r in m["decode"]), name
        assert "e2e" in m
    assert wall < 30  # CI slack over the 10 s budget


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    t0 = time.perf_counter()
    assert main(["report", "--out", str(out), "--json"]) == 0
    print(f"report: {time.perf_counter() - t0:.1f} s")
    return out


class _Page(HTMLParser):
    """Collects <img src> and checks that every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.imgs, self.stack, self.errors, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_files_and_html(report_dir):
    index = report_dir / "index.html"
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert len(page.imgs) >= 5
    for src in page.imgs:
        assert not src.startswith(("/", "http")), src  # relative: the page opens from disk without a server
        f = report_dir / src
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    text = " ".join(page.text)
    for section in ("Paper-style tables", "Tokens/s against grid side", "Time per layer phase",
                    "Bytes per core over the wafer", "Wafer vs GPUs", "Validation"):
        assert section in text, section
    assert "qwen2-72b" in text and "gemv_16k" in text
    assert "validation.png" in page.imgs  # predicted against published, every numeric row
    for row in ("prefill_llama3_8b_t10_480", "e2e_llama3_8b_ladder_4096_4096", "kv_capacity_llama3_8b_shift",
                "e2e_llama3_8b_sglang_2x8xA100_2048_128", "median |error|"):
        assert row in text, row
    assert not list(report_dir.parent.glob(".waferllm-report-*"))  # the temporary folder is gone


def test_report_json_lists_files(report_dir, capsys):
    assert main(["report", "--out", str(report_dir), "--json"]) == 0  # re-writing an existing report is fine
    files = json.loads(capsys.readouterr().out)
    assert files[0].endswith("index.html") and all(Path(f).is_file() for f in files)


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        pytest.skip("no chromium/chrome binary on PATH")
    shot = tmp_path / "shot.png"
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,4000",
                    f"--screenshot={shot}", (report_dir / "index.html").resolve().as_uri()],
                   capture_output=True, timeout=120)
    data = shot.read_bytes() if shot.exists() else b""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a blank page compresses to a few KB


@pytest.mark.parametrize("argv, msg", [
    (["sweep", "--model", "foo"], "unknown model 'foo'"),
    (["sweep", "--paper", "--model", "llama3-8b,foo"], "unknown model 'foo'"),
    (["report", "--out", "OUT", "--model", "foo"], "unknown model 'foo'"),
    (["sweep", "--sides", "0,x"], "bad --sides"),
    (["sweep", "--phase", "e2e"], "invalid choice"),
    (["sweep", "--phase", "prefill", "--context", "5000"], "--context is the KV length of the decode sweep"),
    (["sweep", "--phase", "decode", "--input-len", "5000"], "--input-len is the prompt of the prefill sweep"),
    (["sweep", "--paper", "--sides", "480"], "--sides has no effect with --paper"),
    (["sweep", "--paper", "--phase", "decode"], "--phase has no effect with --paper"),
    (["sweep", "--no-limits"], "--no-limits has no effect on `waferllm sweep`"),
    (["report", "--out", "OUT", "--no-limits"], "--no-limits has no effect on `waferllm report`"),
    (["sweep", "--plot", "/nonexistent-dir/x.png"], "does not exist"),
    (["report", "--out", "FILE"], "exists and is not a folder"),
])
def test_bad_input_one_line(argv, msg, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / "file") if a == "FILE" else a for a in argv]
    rc, out, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and msg in lines[0], err
    if "unknown model" in msg:
        assert "llama3-8b" in lines[0] and "qwen2-72b" in lines[0]  # the known presets are listed
    assert not (tmp_path / "out").exists()  # nothing written on bad input

"""One code path: every numeric op charges itself (machine/ops.py, machine/noc.py), so nothing outside
machine/ charges the ledger by hand; a numeric decode step charges exactly what the shape-only costing does."""

import ast
import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import waferllm

ROOT = Path(waferllm.__file__).parent
# the ledger-charging API and its cost formulas: only machine/ may use them
CHARGING = {"charge_compute", "charge_comm", "charge_elementwise", "charge", "matmul_cycles", "transfer_cycles",
            "chain_cycles", "elementwise_cycles", "_times"}


def _hand_charges(path: Path):
    """(line, name) of every use of a charging name: attribute (mesh.charge_comm, led.charge, mesh._times),
    bare name, or import."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in CHARGING:
            yield node.lineno, node.attr
        elif isinstance(node, ast.Name) and node.id in CHARGING:
            yield node.lineno, node.id
        elif isinstance(node, ast.ImportFrom):
            yield from ((node.lineno, a.name) for a in node.names if a.name in CHARGING)


def test_no_ledger_charge_outside_machine():
    bad: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "machine":
            continue
        for line, name in _hand_charges(path):
            bad.setdefault(str(rel), []).append(f"{line}:{name}")
    report = "\n".join(f"  {f}: {', '.join(v)}" for f, v in bad.items())
    assert not bad, f"hand charges outside machine/ in {len(bad)} file(s) ({', '.join(bad)}):\n{report}"


def test_the_scan_sees_hand_charges(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from waferllm.machine.noc import transfer_cycles\n"
                 "def f(mesh, led):\n    mesh.charge_comm(1)\n    led.charge('a', comm=1)\n    mesh._times = 2\n")
    assert sorted(n for _, n in _hand_charges(f)) == ["_times", "charge", "charge_comm", "transfer_cycles"]


# --- a numeric decode step charges what step_ledger charges ---------------------------------------
def _tiny():
    from waferllm.model import ModelConfig, random_weights

    cfg = ModelConfig(name="tiny", arch="qwen2", vocab_size=97, dim=40, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=12, ffn_dim=56, norm_eps=1e-6, rope_theta=10000.0, max_seq_len=512, qkv_bias=True,
                      tie_embeddings=True)
    return cfg, random_weights(cfg, seed=3, scale=0.3)


def _phases(led, drop=()):
    return {k: dataclasses.asdict(v) for k, v in led.phases.items() if not k.startswith(drop)}


@pytest.mark.parametrize("grid,policy", [("3x5", "shift"), ("4x1", "shift"), ("3x5", "concat")])
def test_numeric_step_charges_the_costed_ledger(roomy, grid, policy):
    """The same occupancy through decode_step on real arrays and through step_ledger (shape-only): every
    phase's cycles, compute, MACs, hops and step count agree (3 lanes, uneven prompts and caches)."""
    from waferllm.engine import kv
    from waferllm.engine.cost import step_ledger
    from waferllm.engine.decode import decode_step
    from waferllm.engine.generate import Engine
    from waferllm.machine import Ledger

    cfg, weights = _tiny()
    eng = Engine(cfg, weights, roomy, grid=grid, max_tokens=40, prefill_grid=None, kv_policy=policy)
    prog, lanes = eng.prog, 3
    ns, ps = [7, 0, 13], [4, 0, 9]
    kcs, vcs = eng.new_cache(lanes)
    led = Ledger(clock_hz=roomy.clock_hz)
    load = kv.step_load(policy, ns, ps, prog.plan.rows)
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    tok, logits, _, _ = decode_step(prog, prog.mesh(led), prog.lm_mesh(led), eng.weights, kcs, vcs, i32([5, 6, 7]),
                                    i32(ns), i32(ns), i32(ps), jnp.ones(lanes, bool), load)
    assert np.asarray(tok).shape == (lanes,) and np.isfinite(np.asarray(logits).max())
    want = _phases(step_ledger(prog, ns, eng.slots, ps), drop=("decode/handover", "decode/interwafer"))
    got = _phases(led)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k

import json

import pytest

from waferllm.spec import DeviceSpec, SpecError, get_device, load_device
from waferllm.spec.device import field_names


def test_presets_have_provenance_for_every_number():
    for name in ("wse2", "wse3"):
        spec = get_device(name)
        for f in field_names():
            if f not in ("name", "sources"):
                assert spec.source(f) != "unspecified", (name, f)


def test_wse2_figures_from_calibration(wse2):
    assert (wse2.height_cores, wse2.width_cores) == (994, 750)
    assert wse2.clock_hz == 1.1e9 and wse2.sram_bytes_per_core == 49152
    assert wse2.link_bytes_per_cycle == 4 and wse2.routes_per_core == 32
    assert wse2.power_w == pytest.approx(400 * 37.5)


def test_unknown_device_lists_known():
    with pytest.raises(SpecError, match="known devices: wse2, wse3"):
        get_device("wse9")


def test_specs_are_frozen_and_keyword_only(wse2):
    with pytest.raises(Exception):
        wse2.clock_hz = 1.0
    with pytest.raises(TypeError):
        DeviceSpec("x")  # positional construction is refused


def test_override_marks_source(wse2):
    big = load_device("wse2", ["sram_bytes_per_core=1048576"])
    assert big.sram_bytes_per_core == 1048576 and big.source("sram_bytes_per_core") == "user override"
    assert big.clock_hz == wse2.clock_hz


@pytest.mark.parametrize("bad, msg", [
    (["sram_per_core=1"], "unknown device field 'sram_per_core'; known fields:"),
    (["clock_hz=fast"], "not a number"),
    (["width_cores=0"], "positive integer"),
    (["beta_cycles_per_relay=0.1"], "contradictory latencies"),
    (["routes_per_core=2"], "below the 4 routes"),
    (["nonsense"], "expected FIELD=VALUE"),
])
def test_bad_overrides(bad, msg):
    with pytest.raises(SpecError, match=msg):
        load_device("wse2", bad)


def test_device_files(tmp_path):
    j = tmp_path / "big.json"
    j.write_text(json.dumps({"base": "wse2", "name": "wse2-1mib", "sram_bytes_per_core": 1 << 20,
                             "sources": {"sram_bytes_per_core": "what-if study"}}))
    spec = load_device(str(j))
    assert spec.name == "wse2-1mib" and spec.sram_bytes_per_core == 1 << 20
    assert spec.source("sram_bytes_per_core") == "what-if study"
    t = tmp_path / "full.toml"
    full = {k: v for k, v in get_device("wse3").to_dict().items() if k != "sources"}
    full["name"] = "mine"
    t.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in full.items()))
    assert load_device(str(t)).width_cores == 755
    (tmp_path / "unk.json").write_text(json.dumps({"base": "wse2", "cores_per_row": 3}))
    with pytest.raises(SpecError, match="unknown device field 'cores_per_row'"):
        load_device(str(tmp_path / "unk.json"))
    (tmp_path / "part.json").write_text(json.dumps({"name": "x", "clock_hz": 1e9}))
    with pytest.raises(SpecError, match="missing device fields"):
        load_device(str(tmp_path / "part.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SpecError, match="not valid json"):
        load_device(str(tmp_path / "broken.json"))
    with pytest.raises(SpecError, match="cannot read device file"):
        load_device(str(tmp_path / "absent.json"))


def test_one_dtype_table():
    """spec/dtypes.py is the only table: bytes and array types agree, and the other layers use it."""
    import numpy as np

    from waferllm.engine import tiles
    from waferllm.spec import ARRAY_DTYPES, DTYPE_BYTES, array_dtype, dtype_bytes, storage_bytes

    assert list(ARRAY_DTYPES) == ["float32", "float16", "bfloat16"]
    for name, dt in ARRAY_DTYPES.items():
        assert np.dtype(dt).itemsize == DTYPE_BYTES[name] == dtype_bytes(name) == storage_bytes(name)
        assert array_dtype(name) == dt and np.dtype(dt).name == name
    assert tiles.DTYPES is ARRAY_DTYPES  # the engine's old name is an alias
    assert storage_bytes("BF16") == 2 and storage_bytes("q8_0") == 34 / 32


@pytest.mark.parametrize("call", ["dtype_bytes", "array_dtype", "check_dtype"])
def test_unknown_dtype_lists_known(call):
    import waferllm.spec as spec

    with pytest.raises(SpecError, match=r"unknown dtype 'int3'; known: float32, float16, bfloat16"):
        getattr(spec, call)("int3")
    with pytest.raises(SpecError, match=r"unknown dtype 'fp8'; known: .*bf16.*q4_1"):
        spec.storage_bytes("fp8")

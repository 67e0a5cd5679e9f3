"""bench/recipe_sizes.py measures real exported files: each file less its header is the bytes
the size report predicts, and the ratios it prints are those of the files' and the reports'
bytes."""

import importlib.util
import json
from pathlib import Path

import pytest

from asrquant.export.packed import read_safetensors

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recipe_sizes", ROOT / "bench" / "recipe_sizes.py")
recipe_sizes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_sizes)


@pytest.fixture(scope="module")
def cpu_sizes(tmp_path_factory):
    meta, _ = read_safetensors(recipe_sizes.TOKENIZER_FROM)
    return recipe_sizes.measure("cpu", json.loads(meta["tokenizer_state"]),
                                tmp_path_factory.mktemp("sizes"))


def test_every_recipe_is_exported_and_its_file_is_the_report_plus_a_header(cpu_sizes):
    rows = cpu_sizes["recipes"]
    assert set(rows) == {"float", *recipe_sizes.FOUR_BIT, *recipe_sizes.TWO_BIT}
    for name, r in rows.items():  # measure() checks file - header == the report's stored bytes
        assert r["file_bytes"] == r["header_bytes"] + r["param_bytes"] + r["buffer_bytes"], name
    # buffers, float32: mel filterbank (201 x 80), STFT window (400), feature mean and std
    # (2 x 80), 4 BatchNorms' running mean and variance (2 x 144 each); int64 batch counts
    assert rows["float"]["buffer_bytes"] == 4 * (201 * 80 + 400 + 2 * 80 + 4 * 2 * 144) + 4 * 8
    assert rows["float"]["param_bytes"] == 4 * cpu_sizes["num_params"]


def test_double_quantized_scales_and_longer_groups_shrink_the_2bit_file(cpu_sizes):
    rows = cpu_sizes["recipes"]
    assert (rows["int2_asym_g64_dq"]["file_bytes"] < rows["int2_asym_g32_dq"]["file_bytes"]
            < rows["int2_asym_g32"]["file_bytes"] < rows["int4_asym_g128"]["file_bytes"])
    assert rows["int2_asym_g32_dq"]["bits_per_quantized_weight"] == pytest.approx(2.348, abs=1e-3)


def test_the_ratios_are_the_files_and_the_reports_and_the_fixed_part_lowers_the_file_ratio(
        cpu_sizes):
    rows, smaller = cpu_sizes["recipes"], cpu_sizes["smaller"]
    pair = smaller["int2_asym_g32_dq vs int4_sym_ch"]
    assert pair["by_file"] == round(1 - rows["int2_asym_g32_dq"]["file_bytes"]
                                    / rows["int4_sym_ch"]["file_bytes"], 4)
    assert pair["by_param_bytes"] == round(1 - rows["int2_asym_g32_dq"]["param_bytes"]
                                           / rows["int4_sym_ch"]["param_bytes"], 4)
    assert all(p["by_file"] < p["by_param_bytes"] for p in smaller.values())

"""bench/quant_bench.py compares like with like: our clip=none against torchao's min-max is the
same method (equal reconstructions, checked), and our clip search is set against the best of
the peers' calibration-free quantizers for the same bits and groups, not against min-max."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quant_bench", ROOT / "bench" / "quant_bench.py")
quant_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quant_bench)


def test_same_method_rows_are_equal_reconstructions():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    same = quant_bench.same_method(w, repeats=1)
    for kind in ("asymmetric", "symmetric"):
        row = same[kind]
        assert row["equal"] and row["differing_elements"] == 0
        assert row["ours_clip_none_mse"] == row["torchao_minmax_mse"] > 0


def test_the_clip_search_is_measured_against_the_best_peer():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    grid = (1.0, 0.9, 0.8, 0.7)
    out = quant_bench.best_effort(w, 1, grid)
    done = {k: v for k, v in out["peers"].items() if "mse" in v}
    assert {"torchao min-max", "hqq"} <= set(done)
    best = min(done, key=lambda k: done[k]["mse"])
    assert out["best_peer"] == best
    assert out["ours_vs_best_peer_error_ratio"] == out["ours"]["mse"] / done[best]["mse"]
    assert out["ours"]["grid"] == len(grid)
    # the half-quadratic optimizer beats plain min-max: min-max is not the yardstick
    assert done["hqq"]["mse"] < done["torchao min-max"]["mse"]

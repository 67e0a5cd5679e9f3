"""asrquant-report aggregation: table columns, baselines, Pareto front, failed runs."""

import json

import pytest

from asrquant.cli.report import build_rows, load_runs, main, pareto_front


def result(mode, name, bits, size, wer, sym=False, gran="group", group=32, clip="none",
           rules=()):
    recipe = None if mode == "float" else {
        "name": name, "rules": list(rules),
        "default": {"bits": bits, "symmetric": sym, "granularity": gran, "group_size": group,
                    "clip": clip}}
    return {"status": "ok", "mode": mode, "recipe": recipe, "size_bytes": int(size * 1e6),
            "effective_bits": bits, "test": {"test": {"wer": wer, "cer": wer / 2,
                                                       "words": 1000}}}


@pytest.fixture
def sweep(tmp_path):
    runs = {
        "0_float": result("float", None, 32, 8.0, 0.10),
        "1_int8": result("ptq", "int8", 8, 2.0, 0.10, sym=True, gran="channel", group=None),
        "2_int4": result("ptq", "int4", 4, 1.0, 0.11),
        "3_int2": result("ptq", "int2", 2, 0.6, 0.30),
        "4_int2_bad": result("ptq", "int2_sym", 2, 0.6, 0.50, sym=True),
        "5_mixed": result("ptq", "mixed", 2, 0.7, 0.20, rules=[{"pattern": "x"}]),
        "6_broken": {"status": "failed", "error": "RuntimeError: out of memory",
                     "overrides": ["quant=int2_sym"]},
    }
    for name, r in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    return tmp_path


def test_rows_carry_sizes_relative_to_float_and_to_the_best_4_bit_run(sweep):
    rows, failed, best4 = build_rows(load_runs(sweep), "test")
    by = {r["recipe"]: r for r in rows}
    assert by["int2 asym g32"]["vs_float"] == pytest.approx(0.6 / 8.0)
    assert by["int2 asym g32"]["vs_4bit"] == pytest.approx(0.6)
    assert by["int4 asym g32"]["rel_wer_change"] == pytest.approx(0.1)
    assert by["mixed"]["bits"] == "mixed" and by["float"]["bits"] == 32
    assert best4["run"] == "2"  # Hydra job folders are named by their number
    assert [f["_path"] for f in failed] == ["6"]


def test_pareto_front_keeps_only_undominated_runs(sweep):
    rows, _, _ = build_rows(load_runs(sweep), "test")
    front = [r["recipe"] for r in pareto_front(rows)]
    # float (same WER as int8, bigger) is dominated
    assert front == ["int2 asym g32", "mixed", "int4 asym g32", "int8 sym ch"]


def test_report_writes_table_csv_and_plot_and_lists_failures(sweep, capsys):
    main([str(sweep)])
    md = (sweep / "results.md").read_text()
    assert "| run | mode | recipe | bits |" in md
    assert "- `6` (`quant=int2_sym`): RuntimeError: out of memory" in md
    assert "1000 words" in md
    assert (sweep / "results.csv").read_text().count("\n") == 8
    assert (sweep / "wer_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])

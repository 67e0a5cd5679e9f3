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


def study_sweep(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    runs = {
        "float": result("float", None, 32, 8.0, 0.10),
        "control": result("finetune", None, 32, 8.0, 0.09),
        "i4": result("ptq", "i4", 4, 1.2, 0.10, group=128),
        "i4mse": result("ptq", "i4m", 4, 1.2, 0.11, group=128, clip="mse"),
        "a32": result("ptq", "a32", 2, 0.8, 0.20),
        "a32mse": result("ptq", "a32m", 2, 0.8, 0.18, clip="mse"),
        "s32": result("ptq", "s32", 2, 0.7, 0.60, sym=True),
        "ach": result("ptq", "ach", 2, 0.6, 0.40, gran="channel", group=None),
        "qat_a32": result("qat", "a32", 2, 0.8, 0.0905),
    }
    runs["control"]["recipe"] = None  # the float control has no recipe
    runs["a32"]["file_bytes"] = 812_345
    for name, r in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    return tmp_path


def test_study_table_has_one_row_per_recipe_with_ptq_and_qat_wer_and_file_size(tmp_path):
    from asrquant.cli.report import study_rows

    rows, base, best4 = study_rows(load_runs(study_sweep(tmp_path)), "test")
    by = {r["recipe"]: r for r in rows}
    assert by["float"]["ptq_wer"] == 0.10 and by["float"]["qat_wer"] == 0.09  # the control
    a32 = by["int2 asym g32"]
    assert (a32["ptq_wer"], a32["qat_wer"]) == (0.20, 0.0905)
    assert a32["size_bytes"] == 812_345 and a32["from_file"]  # the exported file wins
    assert best4["recipe"] == "int4 asym g128"  # lowest PTQ WER among 4-bit recipes
    assert a32["vs_best_4bit"] == pytest.approx(0.812345 / 1.2)
    assert a32["rel_wer_qat"] == pytest.approx((0.0905 - 0.09) / 0.09)


def test_findings_are_computed_from_the_numbers(tmp_path):
    root = study_sweep(tmp_path)
    main([str(root)])
    md = (root / "results.md").read_text()
    assert "## Recipes" in md and "## Findings" in md and "## All runs" in md
    assert "asymmetric has the lower PTQ WER in 1 of 1 matched pairs" in md
    assert "2 bits: better 1, worse 0, equal 0; 4 bits: better 0, worse 1" in md
    # QAT 9.05% vs control 9.00% on 1000 words: within one standard deviation (0.9 points)
    assert "**2-bit QAT is lossless** (paper: yes, on LibriSpeech): holds" in md
    assert (root / "wer_vs_group_size.png").stat().st_size > 1000
    assert (root / "study.csv").read_text().count("\n") == 8  # header + 7 recipes


def test_compare_puts_each_claim_of_two_studies_side_by_side(tmp_path):
    a, b = study_sweep(tmp_path / "a"), study_sweep(tmp_path / "b")
    res = json.loads((b / "qat_a32" / "results.json").read_text())
    res["test"]["test"]["wer"] = 0.20  # the second study's 2-bit QAT is far from lossless
    (b / "qat_a32" / "results.json").write_text(json.dumps(res))
    out = tmp_path / "both.md"
    main(["--compare", f"one={a}", f"two={b}", "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if "2-bit QAT is lossless" in line)
    one, two = row.split(" | ")[1:3]
    assert "holds" in one and "does not hold here" in two

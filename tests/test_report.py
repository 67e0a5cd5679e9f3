"""asrquant-report: table columns, baselines, Pareto front, failed runs, run names, the study
table and findings, plots, and a search's sensitivity table."""

import json
import math
import re

import pytest
from omegaconf import OmegaConf

from asrquant.cli.report import main
from asrquant.quant import QuantSpec
from asrquant.report import (
    build_rows,
    curve_figure,
    group_size_figure,
    load_runs,
    pareto_front,
    read_overrides_yaml,
    run_names,
    sensitivity_table,
    study_rows,
    wer_size_figure,
)


def result(mode, name, bits, size, wer, sym=False, gran="group", group=32, clip="none",
           rules=(), dev=None):
    """A results.json: eval runs (float, ptq) score the dev split as `dev` (asrquant-eval),
    training runs (qat, finetune) record `best_dev_wer`. `dev` defaults to the test WER."""
    recipe = None if mode == "float" else {
        "name": name, "rules": list(rules),
        "default": {"bits": bits, "symmetric": sym, "granularity": gran, "group_size": group,
                    "clip": clip}}
    dev = wer if dev is None else dev
    out = {"status": "ok", "mode": mode, "recipe": recipe, "size_bytes": int(size * 1e6),
           "effective_bits": bits, "test": {"test": {"wer": wer, "cer": wer / 2,
                                                      "words": 1000}}}
    if mode in ("float", "ptq"):
        out["dev"] = {"wer": dev, "cer": dev / 2, "words": 500}
    else:
        out["best_dev_wer"] = dev
    return out


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
    assert best4["folder"] == "2"  # Hydra job folders are named by their number
    assert best4["run"] == "ptq int4 asym g32"  # mode and recipe: no overrides differ here
    assert [f["_path"] for f in failed] == ["6"]


def test_the_best_4_bit_run_is_chosen_by_dev_wer_never_by_test_wer(tmp_path):
    runs = {"0": result("ptq", "a", 4, 1.0, 0.10, dev=0.20),   # best on test
            "1": result("ptq", "b", 4, 1.1, 0.12, dev=0.15),   # best on dev
            "2": result("ptq", "c", 2, 0.5, 0.30, dev=0.30)}
    for name, r in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    rows, _, best4 = build_rows(load_runs(tmp_path), "test")
    assert best4["folder"] == "1" and best4["dev_wer"] == 0.15
    assert {r["folder"]: r["vs_4bit"] for r in rows}["2"] == pytest.approx(0.5 / 1.1)
    main([str(tmp_path)])
    assert "(chosen by dev WER, never test): ptq int4 asym g32 (1)" in (
        tmp_path / "results.md").read_text()


def test_without_dev_wer_there_is_no_4_bit_reference_and_the_report_says_why(tmp_path):
    runs = {"0": result("ptq", "a", 4, 1.0, 0.10), "1": result("ptq", "c", 2, 0.5, 0.3)}
    for name, r in runs.items():
        r.pop("dev")  # results from before asrquant-eval scored the dev split
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    rows, _, best4 = build_rows(load_runs(tmp_path), "test")
    assert best4 is None and all(r["vs_4bit"] is None for r in rows)
    main([str(tmp_path)])
    assert "no 4-bit PTQ run recorded a dev WER" in (tmp_path / "results.md").read_text()


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
        # best on test, not on dev: the reference must be i4mse (best on dev)
        "i4": result("ptq", "i4", 4, 1.2, 0.10, group=128, dev=0.13),
        "i4mse": result("ptq", "i4m", 4, 1.2, 0.11, group=128, clip="mse", dev=0.12),
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
    rows, base, best4 = study_rows(load_runs(study_sweep(tmp_path)), "test")
    by = {r["recipe"]: r for r in rows}
    assert by["float"]["ptq_wer"] == 0.10 and by["float"]["qat_wer"] == 0.09  # the control
    a32 = by["int2 asym g32"]
    assert (a32["ptq_wer"], a32["qat_wer"]) == (0.20, 0.0905)
    assert a32["size_bytes"] == 812_345 and a32["from_file"]  # the exported file wins
    # lowest PTQ dev WER among 4-bit recipes (int4 asym g128 has the lower test WER)
    assert best4["recipe"] == "int4 asym g128 mse"
    assert (by["int4 asym g128"]["ptq_dev_wer"], best4["ptq_dev_wer"]) == (0.13, 0.12)
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


# ------------------------------------------------------------------- run names

def hydra_member(root, num, overrides, exclude=("ckpt",)):
    """A sweep member's folder as Hydra makes it with subdir `${hydra.job.num}_${hydra.job.
    override_dirname}` (a '/' inside an override nests folders), with .hydra/overrides.yaml
    written the way Hydra writes it (OmegaConf.save of the task overrides)."""
    shown = sorted(o for o in overrides if o.lstrip("+").split("=")[0] not in exclude)
    folder = root / f"{num}_{','.join(shown)}"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / ".hydra" / "overrides.yaml")
    return folder


def test_names_of_a_sweep_with_path_overrides_are_short_and_say_what_differs(tmp_path):
    extra = "+data.extra_test={a:/long/path/to/voices/x.jsonl,b:/long/path/y.jsonl}"
    specs = {"int4": dict(bits=4, sym=False), "int8": dict(bits=8, sym=True)}
    num = 0
    for quant, spec in specs.items():
        for seed in (0, 1):
            folder = hydra_member(tmp_path, num, ["ckpt=/some/path/float.ckpt", extra,
                                                  f"quant={quant}", f"seed={seed}"])
            r = result("ptq", quant, spec["bits"], spec["bits"] / 4, 0.1 + num / 100,
                       sym=spec["sym"])
            (folder / "results.json").write_text(json.dumps(r))  # no overrides once ok
            num += 1
    runs = load_runs(tmp_path)
    assert [r["_path"] for r in runs] == ["0", "1", "2", "3"]  # not '0/long/path/...'
    names = sorted(r["_name"] for r in runs)
    # the recipe says what `quant` ran; seed is the other override that differs; the data
    # and checkpoint overrides (paths) are the same in every run and name nothing
    assert names == ["ptq int4 asym g32 seed=0", "ptq int4 asym g32 seed=1",
                     "ptq int8 sym g32 seed=0", "ptq int8 sym g32 seed=1"]
    main([str(tmp_path)])
    md = (tmp_path / "results.md").read_text()
    cells = [[c.strip(" *") for c in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| ")]
    table = [c[0] for c in cells if len(c) == 17 and c[1] == "ptq"]  # the table of every run
    assert sorted(table) == names
    assert all("/" not in n and len(n) < 60 for n in table)
    assert "long/path" not in md and "some/path" not in md


def test_a_name_leaves_out_overrides_that_are_paths_or_the_recipe(tmp_path, monkeypatch):
    data_file = tmp_path / "test.jsonl"
    data_file.write_text("")
    runs = [{"status": "ok", "mode": "ptq", "_path": str(i), "_overrides": o,
             "recipe": {"name": "int2_sym_ch", "rules": [],
                        "default": {"bits": 2, "symmetric": True, "granularity": "channel",
                                    "group_size": None}}}
            for i, o in enumerate([
                ["quant=int8", "quant.bits=2", f"data.test={data_file}", "init_from=a.ckpt",
                 "out=x.yaml", "trainer.max_epochs=1", f"tag={data_file.name}", "lm=/lms/a.bin"],
                ["quant=int4", "quant.bits=2", "data.test=other.jsonl", "init_from=b.ckpt",
                 "out=y.yaml", "trainer.max_epochs=2", "tag=other.jsonl", "lm=/lms/b.bin"]])]
    monkeypatch.chdir(tmp_path)  # `tag=test.jsonl` names an existing file from here
    names = run_names(runs)
    # quant=int8 quant.bits=2 ran int2: the label says so; the files name nothing
    assert names == ["ptq int2 sym ch trainer.max_epochs=1",
                     "ptq int2 sym ch trainer.max_epochs=2"]


def test_runs_whose_names_would_collide_get_their_folder(tmp_path):
    for i in (0, 1):
        folder = hydra_member(tmp_path, i, [f"ckpt=/ckpts/{i}.ckpt", "quant=int4"])
        (folder / "results.json").write_text(json.dumps(result("ptq", "int4", 4, 1.0, 0.1)))
    assert sorted(r["_name"] for r in load_runs(tmp_path)) == [
        "ptq int4 asym g32 (0)", "ptq int4 asym g32 (1)"]


def test_overrides_yaml_reads_back_what_hydra_wrote_quotes_and_folded_lines(tmp_path):
    overrides = ["+data.extra_test={a:/x/y.jsonl,b:/z.jsonl}", "name='it''s: x'", "y=a: b",
                 "s='a,b'", "title=" + " ".join(["word"] * 30), "q=\"x\\ty\"", "u=é ü"]
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / "overrides.yaml")
    assert read_overrides_yaml(tmp_path / "overrides.yaml") == overrides


def test_a_recipe_is_labelled_by_its_spec_name_even_from_an_old_results_json(tmp_path):
    old = {"bits": 3, "symmetric": False, "granularity": "tensor"}  # before clip, dtypes...
    new = QuantSpec(bits=2, group_size=32, clip="fixed", clip_ratio=0.9,
                    scale_dtype="bfloat16").to_dict()
    for name, default in (("old", old), ("new", new)):
        r = result("ptq", name, default["bits"], 1.0, 0.1)
        r["recipe"]["default"] = default
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    rows, _, _ = build_rows(load_runs(tmp_path), "test")
    assert sorted(r["recipe"] for r in rows) == [
        "int2 asym g32 clip0.9 bfloat16", "int3 asym tensor"]
    assert QuantSpec.from_dict(new).name() == "int2_asym_g32_clip0.9_bfloat16"  # same fields


# ------------------------------------------------------------------- plots

PLAIN_NUMBER = re.compile(r"^(\d+(\.\d+)?)?$")  # '2', '0.5', '' (an unlabelled minor tick)


def tick_texts(axis):
    return [t.get_text() for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True)]


def test_wer_against_size_is_drawn_in_percent_and_megabytes_with_plain_ticks():
    rows = [{"mode": "float", "recipe": "float", "size_mb": 8.0, "wer": 0.054},
            {"mode": "ptq", "recipe": "int4", "size_mb": 1.0, "wer": 0.06},
            {"mode": "ptq", "recipe": "int2", "size_mb": 0.6, "wer": 0.30},
            {"mode": "qat", "recipe": "int2", "size_mb": 0.6, "wer": 0.08}]
    fig = wer_size_figure(rows, "t")
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("WER (%") and "MB" in ax.get_xlabel()
    assert ax.collections[0].get_offsets().tolist() == [[8.0, pytest.approx(5.4)]]  # float
    for axis in (ax.xaxis, ax.yaxis):
        texts = tick_texts(axis)
        assert all(PLAIN_NUMBER.match(t) for t in texts), texts  # not '$2\\times10^{0}$'
    assert {"0.5", "1", "2", "5"} <= set(tick_texts(ax.xaxis))
    assert {"10", "20"} <= set(tick_texts(ax.yaxis))


def test_group_size_plot_and_learning_curve_draw_wer_in_percent():
    rows = [{"bits": 2, "ptq_wer": w, "granularity": "group", "group": g, "sym": False,
             "clip": "none"} for g, w in ((32, 0.08), (64, 0.12), (128, 0.2))]
    fig = group_size_figure(rows, "t")
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.lines[0].get_ydata().tolist() == pytest.approx([8.0, 12.0, 20.0])
    assert all(PLAIN_NUMBER.match(t) for t in tick_texts(ax.yaxis)), tick_texts(ax.yaxis)
    assert "10" in tick_texts(ax.yaxis)
    curve = [{"epoch": e, "train_loss": 1.0 / (e + 1), "dev_loss": 1.2 / (e + 1),
              "dev_wer": 0.5 / (e + 1)} for e in range(3)]
    wer_axis = curve_figure(curve, "t").axes[1]
    assert wer_axis.get_ylabel() == "dev WER (%)"
    assert wer_axis.lines[0].get_ydata().tolist() == pytest.approx([50.0, 25.0, 50 / 3])


# ------------------------------------------------------------------- search sensitivity

SEARCH = {"dev": {"loss": 0.1}, "groups": [
    {"name": "ffn", "change": {"2": 0.002, "4": 0.0001},
     "dev": {"2": {"wer": 0.07}, "4": {"wer": 0.065}}},
    {"name": "conv", "change": {"2": 0.0127, "2g64": 0.0139, "2g128": 0.0147, "4": -0.0003},
     "dev": {"2": {"wer": 0.0772}, "2g64": {"wer": 0.0763}, "2g128": {"wer": 0.0781},
             "4": {"wer": 0.066}}},
    {"name": "head", "change": {"2": 0.0106, "2g64": 0.0141},
     "dev": {"2": {"wer": 0.0759}, "2g64": {"wer": 0.083}}},
]}


def test_sensitivity_table_lists_the_largest_dev_loss_increases_first_none_dropped():
    lines = sensitivity_table(SEARCH, top=5).splitlines()
    assert lines[:2] == ["| group @ candidate | dev loss change | dev WER |", "|---|---|---|"]
    # two candidates of one group both in the top five; no row skipped between them
    assert lines[2:] == ["| conv @ 2g128 | +0.0147 | 7.81% |",
                         "| head @ 2g64 | +0.0141 | 8.30% |",
                         "| conv @ 2g64 | +0.0139 | 7.63% |",
                         "| conv @ 2 | +0.0127 | 7.72% |",
                         "| head @ 2 | +0.0106 | 7.59% |"]
    every = sensitivity_table(SEARCH, top=100).splitlines()[2:]
    assert len(every) == 8 and every[-1] == "| conv @ 4 | -0.0003 | 6.60% |"


def test_report_search_prints_and_writes_the_sensitivity_table(tmp_path, capsys):
    path, out = tmp_path / "search.json", tmp_path / "sens.md"
    path.write_text(json.dumps(SEARCH))
    main(["--search", str(path), "--top", "2", "--out", str(out)])
    assert capsys.readouterr().out == out.read_text() == sensitivity_table(SEARCH, 2)
    assert out.read_text().count("\n") == 4


def test_curve_writes_one_row_per_epoch_and_a_plot(tmp_path):
    from asrquant.cli.report import curve_main

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,val/wer,val/cer\n"
        "0,10,2.0,,,\n0,20,1.0,,,\n0,20,,1.4,0.5,0.25\n1,40,0.5,,,\n1,40,,0.9,0.25,0.125\n")
    curve_main([str(tmp_path)])
    lines = (tmp_path / "learning_curve.md").read_text().splitlines()
    assert lines[2:] == ["| 0 | 20 | 1.500 | 1.400 | 0.5000 | 0.2500 |",
                         "| 1 | 40 | 0.500 | 0.900 | 0.2500 | 0.1250 |"]
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def with_method(run, method):
    return {**run, "method": method}


def test_calibration_and_qat_ingredients_get_their_own_rows_and_findings(tmp_path):
    root = study_sweep(tmp_path)
    extra = {  # float test 10%: GPTQ at 14% is 1.4x float; the 4-bit reference is i4mse
        "a32_gptq": with_method(result("ptq", "a32", 2, 0.8, 0.14, dev=0.15), "gptq"),
        "a32_awq": with_method(result("ptq", "a32", 2, 0.8, 0.16, dev=0.14), "awq_clip"),
        "qat_all": with_method(result("qat", "a32", 2, 0.8, 0.092, dev=0.11), "gptq+kd+lsq"),
        # 2.35 bits: 0.62 MB against the 4-bit 1.2 MB (48% smaller), dev within 1 sd
        "qat_dq": with_method(result("qat", "a64", 2, 0.62, 0.112, dev=0.125, group=64),
                              "gptq+kd"),
    }
    for name, r in extra.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(r))
    rows, _, _ = study_rows(load_runs(root), "test")
    labels = {r["recipe"] for r in rows}
    assert {"int2 asym g32 gptq", "int2 asym g32 awq_clip", "int2 asym g32 gptq+kd+lsq",
            "int2 asym g64 gptq+kd"} <= labels
    main([str(root)])
    md = (root / "results.md").read_text()
    # chosen on dev: awq_clip (dev 14%) although gptq has the lower test WER
    assert ("**2-bit PTQ with calibration (no training)** (issue 12's target: <= 1.5x "
            "float): holds here: the best on dev, int2 asym g32 awq_clip, 16.00% = 1.60x"
            not in md)
    assert "the best on dev, int2 asym g32 awq_clip, 16.00% = 1.60x float 10.00%" in md
    # 1 sd of the 4-bit reference's dev WER (12%) on 500 words is 1.45 points: the 0.62 MB
    # model (dev 12.5%) qualifies; its test 11.2% <= 11% + 1 sd (0.99) = 11.99%
    line = next(x for x in md.splitlines() if "at least 40% smaller" in x)
    assert "holds here" in line and "int2 asym g64 gptq+kd (QAT), 48.3% smaller" in line
    assert "**2-bit QAT ingredients**" in md and "int2 asym g32 gptq+kd+lsq 9.20% (1.02x)" in md


def test_the_40_percent_target_names_file_and_parameter_bytes_when_they_disagree(tmp_path):
    root = study_sweep(tmp_path)
    dq = with_method(result("ptq", "a32dq", 2, 0.62, 0.10, dev=0.12), "gptq")
    dq["file_bytes"] = 750_000  # header and buffers: 37.5% below the 4-bit 1.2 MB file
    ref = json.loads((root / "i4mse" / "results.json").read_text())
    ref["file_bytes"] = 1_200_000
    (root / "i4mse" / "results.json").write_text(json.dumps(ref))
    (root / "dq").mkdir()
    (root / "dq" / "results.json").write_text(json.dumps(dq))
    main([str(root)])
    line = next(x for x in (root / "results.md").read_text().splitlines()
                if "at least 40% smaller" in x)
    assert "holds by parameter bytes, not by file bytes" in line
    assert "37.5% smaller" in line and "by parameter bytes" in line and "48.3% smaller" in line


def test_a_fine_tuned_4bit_model_better_on_dev_is_the_4bit_reference(tmp_path):
    root = study_sweep(tmp_path)  # best 4-bit PTQ: int4 asym g128 mse, dev 12%, test 11%
    extra = {"qat_dq": with_method(result("qat", "a64", 2, 0.62, 0.112, dev=0.125, group=64),
                                   "gptq+kd"),
             # QAT of int4 asym g128: dev 9%, test 9.5% -> the reference; 1 sd of 9% on the
             # 500 dev words is 1.28 points: the 0.62 MB model (dev 12.5%) no longer
             # qualifies, the 0.8 MB one (dev 9.05%) does
             "qat_i4": result("qat", "i4", 4, 1.2, 0.095, group=128, dev=0.09)}
    for name, r in extra.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(r))
    rows, _, best4 = study_rows(load_runs(root), "test")
    assert (best4["recipe"], best4["ref_mode"], best4["ref_wer"], best4["ref_dev_wer"]) == \
        ("int4 asym g128", "qat", 0.095, 0.09)
    main([str(root)])
    md = (root / "results.md").read_text()
    line = next(x for x in md.splitlines() if "at least 40% smaller" in x)
    assert ("does not hold here: the smallest 2-bit model within one sd of int4 asym g128 "
            "(QAT) on dev is int2 asym g32 (QAT), 33.3% smaller") in line
    assert "test WER 9.05% against 9.50% + 1 sd = 10.43%" in line
    assert "Best 4-bit (chosen by dev WER, never test): int4 asym g128 (QAT)" in md
    # a tie on dev (12%, the same file) goes to PTQ (no training), whatever the test WER
    (root / "qat_i4" / "results.json").write_text(json.dumps(
        result("qat", "i4m", 4, 1.2, 0.05, group=128, clip="mse", dev=0.12)))
    _, _, best4 = study_rows(load_runs(root), "test")
    assert (best4["recipe"], best4["ref_mode"]) == ("int4 asym g128 mse", "ptq")


def test_a_qat_only_row_takes_the_file_size_of_its_recipe(tmp_path):
    root = study_sweep(tmp_path)
    qat = with_method(result("qat", "a32", 2, 0.5, 0.095), "gptq+kd")  # 0.5: parameter bytes
    (root / "qat_kd").mkdir()
    (root / "qat_kd" / "results.json").write_text(json.dumps(qat))
    rows, _, _ = study_rows(load_runs(root), "test")
    by = {r["recipe"]: r for r in rows}
    assert by["int2 asym g32 gptq+kd"]["size_bytes"] == 812_345  # the int2 asym g32 file
    assert by["int2 asym g32 gptq+kd"]["from_file"]
    assert by["int2 asym g32 gptq+kd"]["param_bytes"] == 500_000


def test_a_dev_tie_goes_to_the_smaller_file_then_to_fewer_qat_ingredients(tmp_path):
    root = study_sweep(tmp_path)
    # distillation ties plain QAT (int2 asym g32, dev 9.05%) on dev and sorts first by folder;
    # its test WER is higher: the tie must not be broken by folder order nor by test WER
    kd = with_method(result("qat", "a32", 2, 0.8, 0.095, dev=0.0905), "kd")
    (root / "a_kd").mkdir()
    (root / "a_kd" / "results.json").write_text(json.dumps(kd))
    main([str(root)])
    line = next(x for x in (root / "results.md").read_text().splitlines()
                if "**2-bit QAT is lossless**" in x)
    assert "int2 asym g32 after QAT 9.05%" in line, line
    rows, _, _ = study_rows(load_runs(root), "test")
    assert [r["method"] for r in rows if r["recipe"].startswith("int2 asym g32")
            and r.get("qat_wer") is not None] == ["kd", None]


def test_a_refined_calibration_counts_as_calibration_ptq(tmp_path):
    root = study_sweep(tmp_path)
    extra = {  # float test 10%: the refined GPTQ (dev 13%) is chosen over plain GPTQ (15%)
        "a32_gptq": with_method(result("ptq", "a32", 2, 0.8, 0.16, dev=0.15), "gptq"),
        "a32_ref": with_method(result("ptq", "a32", 2, 0.8, 0.14, dev=0.13),
                               "gptq+refine1+float_target"),
        # symmetric GPTQ beats asymmetric GPTQ; the refined run has no symmetric twin
        "s32_gptq": with_method(result("ptq", "s32", 2, 0.7, 0.155, sym=True), "gptq"),
        # pairs for the clip and group findings: GPTQ with GPTQ, never with round-to-nearest
        "a32mse_gptq": with_method(result("ptq", "a32m", 2, 0.8, 0.15, clip="mse", dev=0.3),
                                   "gptq"),
        "a16_gptq": with_method(result("ptq", "a16", 2, 0.9, 0.12, group=16, dev=0.3), "gptq"),
    }
    for name, r in extra.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(r))
    main([str(root)])
    md = (root / "results.md").read_text()
    assert ("holds here: the best on dev, int2 asym g32 gptq+refine1+float_target, 14.00% = "
            "1.40x float 10.00%") in md
    # pairs are matched on everything but the grid: rtn with rtn, gptq with gptq
    assert ("asymmetric has the lower PTQ WER in 1 of 2 matched pairs (same granularity, "
            "clipping and calibration)") in md
    assert "PTQ WER with mse clipping against none, matched pairs, 2 bits: better 2, worse 0" in md
    assert "at 2 bits: int2 asym ch 40.00% -> g32 20.00%." in md  # its twin, not g16 gptq


def test_the_noise_of_a_wer_is_never_zero_and_close_to_the_binomial_sd():
    from asrquant.report.findings import _noise_points
    # no error on 1,458 dev words: about one word (0.07 points), not 0
    p = 1 / 1460
    assert _noise_points(0.0, 1458) == pytest.approx(100 * math.sqrt(p * (1 - p) / 1458))
    assert 0.06 < _noise_points(0.0, 1458) < 0.08
    # at 5% on 2,241 words it is the plain binomial sd to within 1%
    plain = 100 * math.sqrt(0.05 * 0.95 / 2241)
    assert _noise_points(0.05, 2241) == pytest.approx(plain, rel=0.01)
    assert _noise_points(1.2, 100) == 0.0  # a WER above 1 (insertions): no binomial noise

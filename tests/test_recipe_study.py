"""The study recipe end to end in its quick mode: every stage on a tiny corpus, the report
(study table, findings, plots), the exports and the peers, from one command."""

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_study_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "MODE": "quick", "OUT": str(out), "THREADS": "1", "PEERS": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "recipes/synthetic/sweep.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 10):  # 8 and 9: calibration PTQ and the QAT ablation, one run each
        assert f"== {n}." in proc.stdout
    runs = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    assert runs and all(r["status"] == "ok" for r in runs), [r.get("error") for r in runs]
    report = out / "report"
    md = (report / "results.md").read_text()
    assert "## Recipes" in md and "## Findings" in md and "searched_at_int2" in md
    for label in ("int2 asym g32 gptq+refine1+float_target",  # stages 8 and 9
                  "int2 asym g32 gptq+kd+lsq"):
        assert re.search(rf"\| \**{re.escape(label)}\** \|", md), label
    assert "all sizes are exported files' bytes" in md
    for name in ("wer_vs_size.png", "wer_vs_group_size.png", "study.csv", "exports.md",
                 "peers.md"):
        assert (report / name).stat().st_size > 100, name
    exports = (report / "exports.md").read_text().splitlines()[2:]
    assert len(exports) == 8  # seven recipes and the QAT model
    for line in exports:  # predicted bytes == tensor bytes for every file
        cells = [c.strip() for c in line.split("|")]
        assert cells[4] == cells[5], line
    # the wall time of every stage, with the machine, as README's main-job time quotes it
    timing = json.loads((report / "timing.json").read_text())
    stages = [s["stage"].split(".")[0] for s in timing["stages"]]
    assert stages == ["1", "2", "3", "4", "5", "6", "8", "9", "7"]  # the report runs last
    assert timing["total_s"] == sum(s["wall_s"] for s in timing["stages"]) > 0
    assert timing["mode"] == "quick" and timing["machine"]["cores"] >= 1


def test_study_and_the_cosine_qat_recipe_refuse_bad_settings_by_name(tmp_path):
    env = {**os.environ, "QAT_OPTIM": "adam", "OUT": str(tmp_path / "s")}
    proc = subprocess.run(["bash", str(ROOT / "recipes/study.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "QAT_OPTIM=adam is invalid; allowed: noam, cosine" \
        in proc.stdout, proc.stdout + proc.stderr
    env = {**os.environ, "REF": str(tmp_path / "missing"), "OUT": str(tmp_path / "c")}
    proc = subprocess.run(["bash", str(ROOT / "recipes/synthetic/qat12_cosine.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "has no ptq_group" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "c").exists()  # nothing started
    for var, value, message in [("EPOCHS", "0", "EPOCHS=0 is invalid; allowed: an integer"),
                                ("MEMBERS", "dq lsq", "MEMBERS: lsq is invalid; allowed: "
                                 "control plain kd dq dq_g64 gptq_init int4 ternary dq_gptq_kd "
                                 "dq64_gptq_kd sym_all ternary_mse ternary_mse_gk")]:
        proc = subprocess.run(["bash", str(ROOT / "recipes/synthetic/qat12_cosine.sh")],
                              env={**env, var: value}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and message in proc.stdout, proc.stdout + proc.stderr
        assert not (tmp_path / "c").exists()
    # the corpus-generic recipe behind it
    for extra, message in [({"CORPUS": "librispeech"}, "CORPUS=librispeech is invalid; "
                            "allowed: synthetic, fsdd, an4"),
                           ({"CORPUS": "fsdd"}, "CORPUS=fsdd needs DATA_DIR"),
                           ({"CORPUS": "an4", "DATA_DIR": str(tmp_path / "none")},
                            f"DATA_DIR={tmp_path / 'none'} is not a folder")]:
        proc = subprocess.run(["bash", str(ROOT / "recipes/qat_cosine.sh")],
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stdout, proc.stdout + proc.stderr
        assert not (tmp_path / "c").exists()

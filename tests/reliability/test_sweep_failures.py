"""Reliability matrix, sweeps: one member raises, one runs out of memory (simulated), one is
killed outright; the report still lists every other member, and the failed ones with their
errors."""

import json
import subprocess

from rel_helpers import PYTHON, ROOT, child_env

from asrquant.cli.report import main as report_main

WRAPPER = '''
import os, signal, torch
import asrquant.runs as pipeline

real = pipeline.run_eval

def run_eval(cfg, run_dir):
    bits = cfg["quant"]["bits"]
    if bits == 8:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    if bits == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return real(cfg, run_dir)

pipeline.run_eval = run_eval
from asrquant.cli.eval import main  # binds the wrapped run_eval
main()
'''


def test_sweep_with_a_raising_an_oom_and_a_killed_member_still_reports_the_rest(
        tiny_ckpt, corpus_cache, tmp_path, tiny_data):
    wrapper = tmp_path / "eval_with_faults.py"
    wrapper.write_text(WRAPPER)
    sweep = tmp_path / "sweep"
    # members in order: 0 ok, 1 bad value (raises), 2 out of memory, 3 ok, 4 killed
    proc = subprocess.run(
        [PYTHON, str(wrapper), "-m", f"ckpt={tiny_ckpt}", "quant=int4",
         "quant.bits=4,9,8,3,2", f"hydra.sweep.dir={sweep}", *tiny_data,
         f"data.synthetic.cache_dir={corpus_cache}"],
        capture_output=True, text=True, timeout=600, env=child_env(), cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-3000:]  # the sweep process itself was killed
    status = {p.parent.name.split("_")[0]: json.loads(p.read_text())["status"]
              for p in sweep.rglob("results.json")}
    assert status == {"0": "ok", "1": "failed", "2": "failed", "3": "ok", "4": "running"}

    report_main([str(sweep)])
    md = (sweep / "results.md").read_text()
    assert "| int4 sym ch |" in md and "| int3 sym ch |" in md
    # failed members are listed with their overrides, less the paths (ckpt, data cache)
    assert "- `1` (`quant=int4 quant.bits=9 data.synthetic.n_train=24" in md
    assert str(tiny_ckpt) not in md and str(corpus_cache) not in md
    assert ("quant.bits=9 data.synthetic.n_train=24" in md
            and "`): ValueError: QuantSpec.bits=9 is invalid; allowed: an int in 1..8") in md
    assert ("`): OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB "
            "(simulated)") in md
    assert "`): did not finish: status 'running' since " in md
    assert "(killed, e.g. out of memory or a time limit, or still running)" in md
    rows = (sweep / "results.csv").read_text().splitlines()
    assert sum(",ok," in r for r in rows) == 2
    assert sum(",failed," in r for r in rows) == 2 and sum(",running," in r for r in rows) == 1

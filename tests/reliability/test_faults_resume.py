"""Reliability matrix, faults: a killed training run resumes to the uninterrupted result;
every file is written atomically (a crash leaves the old file or none, never half of one);
an unwritable or full output folder fails at the start; a second run into a folder in use
fails at once."""

import ast
import json
import signal
import subprocess
import time

import pytest
import torch
from rel_helpers import PYTHON, ROOT, child_env

import asrquant.io
from asrquant.io import RunDirInUse, atomic_write_json, check_writable, run_dir_lock

# No dropout and no SpecAugment: the only randomness left would come from the RNG state, which
# Lightning does not checkpoint; without it a resumed run must match the uninterrupted one.
DETERMINISTIC = ["model.dropout=0", "model.freq_masks=0", "model.time_masks=0",
                 "trainer.max_epochs=12", "data.max_batch_seconds=20", "test_after_fit=false"]


@pytest.fixture
def start(tiny_data, tiny_model):
    """start(run, cache): the deterministic tiny training into folder `run`, as a child."""
    def start_training(run, cache):
        cmd = [PYTHON, "-m", "asrquant.cli.train", *tiny_data, *tiny_model, *DETERMINISTIC,
               f"data.synthetic.cache_dir={cache}", f"hydra.run.dir={run}"]
        return subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return start_training


def finish(proc, timeout=300):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def kill_after_checkpoints(proc, last, n, sig):
    """Send `sig` once last.ckpt has been (re)written `n` times; returns the epoch it holds."""
    seen, stamp, deadline = 0, None, time.monotonic() + 300
    while seen < n:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        mtime = last.stat().st_mtime_ns if last.exists() else None
        if mtime is not None and mtime != stamp:
            seen, stamp = seen + 1, mtime
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return torch.load(last, weights_only=True)["epoch"]


def weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_sigterm_then_sigkill_then_rerun_resumes_to_the_uninterrupted_result(corpus_cache,
                                                                             tmp_path, start):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    finish(start(straight, corpus_cache))

    last = broken / "checkpoints" / "last.ckpt"
    proc = start(broken, corpus_cache)
    epoch_term = kill_after_checkpoints(proc, last, 1, signal.SIGTERM)
    assert proc.returncode == 143  # not 0: the run did not finish
    state = json.loads((broken / "results.json").read_text())
    assert state["status"] == "interrupted" and "SIGTERMException" in state["error"]

    proc = start(broken, corpus_cache)  # the same command: resumes
    epoch_kill = kill_after_checkpoints(proc, last, 3, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert epoch_term < epoch_kill < 11  # really stopped twice, part way
    assert json.loads((broken / "results.json").read_text())["status"] == "running"
    finish(start(broken, corpus_cache))  # the same command again: resumes and completes

    a, b = weights(straight), weights(broken)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    diffs = {k: (a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item()
             for k in a["state_dict"]}
    assert max(diffs.values()) <= 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    ra = json.loads((straight / "results.json").read_text())
    rb = json.loads((broken / "results.json").read_text())
    assert rb["status"] == "ok" and ra["steps"] == rb["steps"]
    assert ra["best_dev_wer"] == pytest.approx(rb["best_dev_wer"], abs=1e-9)
    assert ra["last_dev"]["loss"] == pytest.approx(rb["last_dev"]["loss"], rel=1e-5)


# ------------------------------------------------------------- one run per output folder

def test_a_folder_is_held_by_one_run_at_a_time_and_free_after_it(tmp_path):
    atomic_write_json(tmp_path / "results.json", {"status": "running", "pid": 4242,
                                                  "started": "2026-12-06T05:24:51"})
    with run_dir_lock(tmp_path):
        with pytest.raises(RunDirInUse) as e, run_dir_lock(tmp_path):
            pass
        assert str(e.value).startswith(f"output folder {tmp_path} is in use by another run "
                                       "(pid 4242, started 2026-12-06T05:24:51)")
    with run_dir_lock(tmp_path):  # released at the end of the block
        pass


def test_a_second_command_into_a_folder_in_use_fails_and_leaves_its_results_alone(tmp_path,
                                                                                 cfg_of):
    """What happened once by hand: a resume started while the first process still ran; both
    wrote the same metrics.csv and both runs crashed in Lightning's CSV logger. Here the
    entry points' wrapper (every command's) meets a folder whose lock a live run holds."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from asrquant.cli.common import run_and_record

    record = {"status": "running", "pid": 4242, "started": "2026-12-06T05:24:51"}
    atomic_write_json(tmp_path / "results.json", record)
    cfg = cfg_of("eval", ["ckpt=none.ckpt"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    started = []
    try:
        with run_dir_lock(tmp_path), pytest.raises(RunDirInUse, match=(
                f"output folder {tmp_path} is in use by another run \\(pid 4242")):
            run_and_record(lambda c, run_dir: started.append(run_dir), cfg)
        assert started == []
        assert json.loads((tmp_path / "results.json").read_text()) == record
        run_and_record(lambda c, run_dir: started.append(run_dir), cfg)  # free again: it runs
        assert started == [tmp_path]
    finally:
        HydraConfig.instance().cfg = None


# -------------------------------------------------------------------- atomic writes

def test_a_crash_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"status": "ok", "wer": 0.1})

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write('{"status": "ok", "we')  # half written ...
        raise KeyboardInterrupt  # ... when the process is stopped

    with pytest.raises(KeyboardInterrupt):
        asrquant.io.atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"status": "ok", "wer": 0.1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_export_that_crashes_midway_leaves_no_file_a_loader_would_trust(tmp_path,
                                                                          monkeypatch):
    import asrquant.export.packed as export
    from asrquant.data.tokenizer import CharTokenizer
    from asrquant.lightning.module import ASRModule
    from asrquant.models.sizes import size_config
    from asrquant.quant import QuantRecipe, QuantSpec

    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, d_model=32, num_layers=1, ffn_dim=64,
                      subsampling_channels=8)
    ckpt = {"state_dict": ASRModule(cfg, tok).state_dict(), "model_config": cfg.to_dict(),
            "tokenizer_state": tok.to_state()}
    real = export.save_file

    def dies_halfway(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        raise MemoryError("simulated crash while writing")

    monkeypatch.setattr(export, "save_file", dies_halfway)
    out = tmp_path / "model.safetensors"
    with pytest.raises(MemoryError):
        export.export_packed(ckpt, QuantRecipe(QuantSpec(bits=2, group_size=32)), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_file_write_in_the_package_goes_through_a_temporary_name():
    """Static guard: writes outside asrquant/io.py must target a
    temporary path (a name containing 'tmp') that is renamed into place afterwards."""
    writers = ("write_text", "write_bytes", "savefig", "torch.save", "save_file",
               "soundfile.write", "save_checkpoint", "np.save", "to_csv")
    offenders = []
    for path in sorted((ROOT / "asrquant").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel == "asrquant/io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            target = " ".join(ast.unparse(a) for a in node.args)
            if isinstance(node.func, ast.Attribute) and name.endswith(("write_text",
                                                                       "write_bytes")):
                target = ast.unparse(node.func.value)
            mode = next((ast.unparse(a) for a in node.args[1:2]), "") + " ".join(
                ast.unparse(k.value) for k in node.keywords if k.arg == "mode")
            is_open_for_writing = name == "open" and any(c in mode for c in "wax+")
            if "atomic" in name:
                continue
            if (name.endswith(writers) or is_open_for_writing) and not any(
                    t in target for t in ("tmp", "lock")):
                offenders.append(f"{rel}:{node.lineno} {name}({target})")
    assert offenders == []


# ------------------------------------------------------------- unwritable output folders

def test_a_full_disk_fails_at_the_start_naming_the_folder(tmp_path, monkeypatch, cfg_of,
                                                           tiny_data):
    import shutil

    from asrquant.runs import evaluate

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(asrquant.io.shutil, "disk_usage",
                        lambda p: usage._replace(free=5 * 2**20))
    monkeypatch.setattr(evaluate, "data_sources", lambda *a: pytest.fail("data was touched"))
    cfg = cfg_of("eval", tiny_data + ["ckpt=/x.ckpt"])
    with pytest.raises(OSError) as e:
        evaluate.run_eval(cfg, tmp_path / "run")
    assert str(e.value) == (f"output folder {str(tmp_path / 'run')!r} has only 5.0 MiB free; "
                            "allowed: at least 64 MiB (checkpoints, results and predictions "
                            "are written there)")


def test_a_disk_that_refuses_writes_fails_at_the_start(tmp_path, monkeypatch, cfg_of,
                                                        tiny_data):
    import errno
    import os

    from asrquant.runs import train

    real_fsync = os.fsync

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(asrquant.io.os, "fsync", enospc)
    monkeypatch.setattr(train, "data_sources", lambda *a: pytest.fail("data was touched"))
    with pytest.raises(OSError) as e:
        train.run_train(cfg_of("train", tiny_data), tmp_path / "run")
    monkeypatch.setattr(asrquant.io.os, "fsync", real_fsync)
    assert str(e.value) == (f"output folder {str(tmp_path / 'run')!r} is not writable: "
                            "No space left on device")


def test_an_output_folder_that_cannot_be_created_fails_at_the_start(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match=r"output folder '.*/file/run' is not writable: "
                                      "Not a directory"):
        check_writable(tmp_path / "file" / "run")


def test_a_read_only_output_folder_fails_at_the_start(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the two tests above cover it")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OSError, match="is not writable: Permission denied"):
            check_writable(ro / "run")
    finally:
        ro.chmod(0o755)

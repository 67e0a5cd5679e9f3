"""End to end on a tiny synthetic corpus: train, PTQ eval, QAT, results.json, config errors."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from asrquant.cli.common import CONF_DIR
from asrquant.data.text import normalize_text
from asrquant.runs import run_eval, run_train, validate_config

TINY = [
    "data.synthetic.n_train=24", "data.synthetic.n_dev=6", "data.synthetic.n_test=6",
    "data.synthetic.n_test_voices=6", "trainer.enable_progress_bar=false", "threads=1",
]
TINY_MODEL = ["model.num_layers=1", "model.d_model=32", "model.ffn_dim=64",
              "model.subsampling_channels=8", "tokenizer.vocab_size=40"]


def cfg_of(name, overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus")
    run = tmp_path_factory.mktemp("train")
    data = [f"data.synthetic.cache_dir={cache}"]
    cfg = cfg_of("train", TINY + TINY_MODEL + data + ["trainer.max_epochs=2"])
    validate_config(cfg, "train")
    return run_train(cfg, run), run, data


def test_training_writes_results_json_with_everything_a_table_needs(trained):
    results, run, _ = trained
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["mode"] == "float"
    for key in ("git_revision", "config", "wall_time_s", "size_bytes", "float32_bytes",
                "effective_bits", "num_params", "best_checkpoint", "best_dev_wer"):
        assert key in on_disk, key
    assert on_disk["size_bytes"] == on_disk["float32_bytes"] == 4 * on_disk["num_params"]
    assert set(on_disk["test"]) == {"test", "heldout_voices"}
    assert on_disk["test"]["test"]["words"] > 0 and 0 <= on_disk["test"]["test"]["cer"]
    assert Path(on_disk["best_checkpoint"]).is_file()
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_ptq_eval_quantizes_the_float_checkpoint(trained, tmp_path):
    results, _, data = trained
    cfg = cfg_of("eval", TINY + data + [f"ckpt={results['best_checkpoint']}",
                                        "quant=int2_asym_g32"])
    out = run_eval(cfg, tmp_path)
    assert out["mode"] == "ptq" and out["recipe"]["name"] == "int2_asym_g32"
    assert 2.9 < out["effective_bits"] < 3.5
    assert out["size_bytes"] < results["size_bytes"] / 4
    assert out["test"]["test"]["words"] == results["test"]["test"]["words"]


def test_qat_fine_tunes_from_float_and_its_checkpoint_evaluates_quantized(trained, tmp_path):
    results, _, data = trained
    cfg = cfg_of("train", TINY + TINY_MODEL + data + [f"init_from={results['best_checkpoint']}",
                                         "experiment=qat_int4", "trainer.max_epochs=1"])
    qat = run_train(cfg, tmp_path / "qat")
    assert qat["mode"] == "qat" and qat["effective_bits"] < 5
    ckpt = torch.load(qat["best_checkpoint"], weights_only=True)
    assert ckpt["asrquant_quantization"]["recipe"]["name"] == "int4_asym_g128"
    cfg = cfg_of("eval", TINY + data + [f"ckpt={qat['best_checkpoint']}"])
    again = run_eval(cfg, tmp_path / "eval")
    assert again["mode"] == "qat"
    assert again["test"]["test"]["wer"] == pytest.approx(qat["test"]["test"]["wer"])


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["quant=int2_asym_g32", "quant.bits=9"], "QuantSpec.bits=9"),
        (["quant=int2_asym_g32", "quant.group_size=-4"], "QuantSpec.group_size=-4"),
        (["quant=int2_asym_g32", "quant.bits=two"], "QuantSpec.bits='two'"),
        (["model.size=xl"], "model.size='xl' is invalid; allowed: ['cpu', 'l', 'm', 's']"),
        (["data.kind=tfrecord"], "data.kind='tfrecord' is invalid"),
        (["optim.lr=-1"], "optim.lr=-1 is invalid"),
    ],
)
def test_bad_values_fail_before_any_work_naming_key_value_and_allowed(overrides, needle):
    with pytest.raises(ValueError) as e:
        validate_config(cfg_of("train", overrides), "train")
    assert needle in str(e.value)


def test_unknown_recipe_and_misspelt_keys_are_refused_by_composition():
    options = r"(?s)quant/int9.*Available options in .quant.:.*int2_asym_g32"
    with pytest.raises(MissingConfigException, match=options):
        cfg_of("train", ["quant=int9"])
    with pytest.raises(ConfigCompositionException, match="bitz"):
        cfg_of("train", ["quant.bitz=2"])


def test_a_joblib_sweep_records_failed_members_and_the_report_keeps_the_others(trained,
                                                                             tmp_path):
    import subprocess
    import sys

    results, _, data = trained
    missing = tmp_path / "missing.ckpt"
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "asrquant.cli.eval", "-m",
           f"ckpt={results['best_checkpoint']},{missing}", "quant=float,int4",
           f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *TINY, *data]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.rglob("results.json"))
    assert statuses == ["failed", "failed", "ok", "ok"]
    report = subprocess.run([sys.executable, "-m", "asrquant.cli.report", str(sweep)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    md = (sweep / "results.md").read_text()
    assert "int4" in md and "float" in md and "Failed runs" in md
    assert "missing.ckpt' is not a file" in md
    assert (sweep / "wer_vs_size.png").stat().st_size > 1000
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and sum(",failed," in r for r in rows) == 2


def test_ljspeech_flac_sentences_go_through_the_manifest_reader_and_evaluation(
        trained, tmp_path, shared_dir):
    """Real read speech (FLAC, long sentences, punctuation and case) scored end to end."""
    results, _, _ = trained
    src = Path(shared_dir) / "data" / "ljspeech-part1" / "all.jsonl"
    lines = [json.loads(x) for x in src.read_text().splitlines()[:8]]
    for x in lines:  # absolute paths: the manifest now lives elsewhere
        x["audio_filepath"] = str(src.parent / x["audio_filepath"])
    manifest = tmp_path / "lj.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = cfg_of("eval", ["data=manifest", "data.train=null", f"data.test={manifest}",
                          f"ckpt={results['best_checkpoint']}", "threads=1",
                          "trainer.enable_progress_bar=false"])
    out = run_eval(validate_config(cfg, "eval"), tmp_path / "run")
    lj = out["test"]["test"]
    assert lj["utterances"] == 8
    # scored on normalised text: "well-known," -> "well known"
    assert lj["words"] == sum(len(normalize_text(x["text"]).split()) for x in lines)
    preds = (tmp_path / "run" / "predictions").glob("test_test_*.tsv")
    refs = [line.split("\t")[1] for line in next(preds).read_text().splitlines()[1:]]
    assert all(r == r.lower() and "," not in r for r in refs)  # normalised references


def test_packed_model_scores_exactly_the_fake_quant_wer_and_transcripts(trained, tmp_path):
    from asrquant.runs import run_export

    results, _, data = trained
    ckpt = f"ckpt={results['best_checkpoint']}"
    ptq = run_eval(cfg_of("eval", TINY + data + [ckpt, "quant=int2_asym_g32_mse",
                                                 "export=true"]), tmp_path / "ptq")
    exp = run_export(cfg_of("export", [ckpt, "quant=int2_asym_g32_mse"]), tmp_path / "exp")
    assert exp["tensor_bytes"] == exp["predicted_bytes"]
    # eval's export=true writes the same file as asrquant-export
    written = tmp_path / "ptq" / "model.safetensors"
    assert ptq["file_bytes"] == exp["file_bytes"] == written.stat().st_size
    packed = run_eval(cfg_of("eval", TINY + data + [f"packed={written}"]), tmp_path / "pk")
    assert packed["mode"] == "packed"
    for name in ("test", "heldout_voices"):
        assert packed["test"][name]["wer"] == ptq["test"][name]["wer"]
        a = sorted((tmp_path / "ptq" / "predictions").glob(f"test_{name}_*.tsv"))[0]
        b = sorted((tmp_path / "pk" / "predictions").glob(f"test_{name}_*.tsv"))[0]
        assert a.read_text() == b.read_text()

"""End to end on a tiny synthetic corpus: train, PTQ eval, QAT, results.json, config errors.
Checks that two paths give the same WER use the shipped float model, which recognises the
corpus (a tiny model trained for seconds scores WER 1.0 on every path, right or wrong)."""

import json
from pathlib import Path

import jiwer
import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from asrquant.data.text import normalize_text
from asrquant.runs import run_eval, run_train, validate_config

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cpu_synthetic_float.safetensors"
SETS = ("test", "heldout_voices")


def predictions(run_dir, name):
    """(refs, hyps) of test set `name` from the predictions TSV a run wrote."""
    (path,) = (Path(run_dir) / "predictions").glob(f"test_{name}_epoch*.tsv")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [r[1] for r in rows], [r[2] for r in rows]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_data):
    """Overrides of the tiny synthetic corpus, built on first use in a module-wide cache."""
    return tiny_data + [f"data.synthetic.cache_dir={tmp_path_factory.mktemp('corpus')}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cfg_of, corpus, tiny_model):
    """A tiny model trained for 2 epochs: for what training writes, not for comparing WERs."""
    run = tmp_path_factory.mktemp("train")
    cfg = cfg_of("train", corpus + tiny_model + ["trainer.max_epochs=2"])
    validate_config(cfg, "train")
    return run_train(cfg, run), run


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, cfg_of, corpus):
    """The shipped float model evaluated on the tiny corpus (results, run folder)."""
    run = tmp_path_factory.mktemp("shipped")
    return run_eval(cfg_of("eval", corpus + [f"ckpt={SHIPPED}"]), run), run


def test_the_shipped_model_recognises_the_tiny_corpus_so_its_wers_inform(shipped):
    """What the WER comparisons below stand on: a wrong path would change the numbers."""
    out, run = shipped
    assert out["mode"] == "float"
    for name in SETS:
        refs, hyps = predictions(run, name)
        assert all(hyps) and out["test"][name]["wer"] < 0.5, name
    # a scorer that swapped CER and WER, dropped spaces or averaged per utterance would differ
    refs, hyps = predictions(run, "heldout_voices")
    held_out = out["test"]["heldout_voices"]
    assert held_out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert held_out["cer"] < held_out["wer"]


def test_training_writes_results_json_with_everything_a_table_needs(trained):
    results, run = trained
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["mode"] == "float"
    for key in ("git_revision", "config", "wall_time_s", "size_bytes", "float32_bytes",
                "effective_bits", "num_params", "best_checkpoint", "best_dev_wer"):
        assert key in on_disk, key
    assert on_disk["size_bytes"] == on_disk["float32_bytes"] == 4 * on_disk["num_params"]
    assert set(on_disk["test"]) == {"test", "heldout_voices"}
    for name in SETS:  # scored on what the run wrote as its predictions
        refs, hyps = predictions(run, name)
        assert on_disk["test"][name]["words"] == sum(len(r.split()) for r in refs) > 0
        assert on_disk["test"][name]["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert Path(on_disk["best_checkpoint"]).is_file()
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_eval_scores_the_dev_split_training_chose_on_apart_from_the_test_sets(shipped, cfg_of,
                                                                            corpus, tmp_path):
    out, run = shipped
    assert set(out["test"]) == set(SETS)  # dev is not a test set
    refs, hyps = predictions(run, "dev")
    assert out["dev"]["utterances"] == len(refs) == 6  # data.synthetic.n_dev of tiny_data
    assert out["dev"]["words"] == sum(len(r.split()) for r in refs) and all(hyps)
    assert out["dev"]["wer"] < 0.5
    plain = run_eval(cfg_of("eval", corpus + [f"ckpt={SHIPPED}", "score_dev=false"]), tmp_path)
    assert "dev" not in plain and plain["test"] == out["test"]


def test_ptq_eval_quantizes_the_float_checkpoint(shipped, cfg_of, corpus, tmp_path):
    float_, _ = shipped
    out = run_eval(cfg_of("eval", corpus + [f"ckpt={SHIPPED}", "quant=int2_asym_g32"]),
                   tmp_path)
    assert out["mode"] == "ptq" and out["recipe"]["name"] == "int2_asym_g32"
    assert 2.9 < out["effective_bits"] < 3.5
    assert out["size_bytes"] < float_["size_bytes"] / 4
    for name in SETS:
        ptq, ref = out["test"][name], float_["test"][name]
        assert ptq["words"] == ref["words"]
        assert ptq["loss"] > ref["loss"]  # the weights evaluated were the 2-bit ones
        assert ptq["wer"] < 0.5  # and still recognise: a broken quantizer would not


def test_qat_fine_tunes_from_float_and_its_checkpoint_evaluates_quantized(cfg_of, corpus,
                                                                            tmp_path):
    cfg = cfg_of("train", corpus + [f"init_from={SHIPPED}", "experiment=qat_int4",
                                    "trainer.max_epochs=1"])
    qat = run_train(cfg, tmp_path / "qat")
    assert qat["mode"] == "qat" and qat["effective_bits"] < 5
    ckpt = torch.load(qat["best_checkpoint"], weights_only=True)
    assert ckpt["asrquant_quantization"]["recipe"]["name"] == "int4_asym_g128"
    cfg = cfg_of("eval", corpus + [f"ckpt={qat['best_checkpoint']}"])
    again = run_eval(cfg, tmp_path / "eval")
    assert again["mode"] == "qat"
    for name in SETS:  # the reloaded model is the one QAT tested, fake quantization included
        refs, hyps = predictions(tmp_path / "eval", name)
        assert all(hyps) and again["test"][name]["wer"] < 0.5, name  # informative
        assert predictions(tmp_path / "qat", name) == (refs, hyps)
        assert again["test"][name]["wer"] == qat["test"][name]["wer"]
        # the loss moves with any weight: reloaded without fake quantization it would differ
        assert again["test"][name]["loss"] == pytest.approx(qat["test"][name]["loss"],
                                                            rel=1e-6)


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
def test_bad_values_fail_before_any_work_naming_key_value_and_allowed(cfg_of, overrides,
                                                                      needle):
    with pytest.raises(ValueError) as e:
        validate_config(cfg_of("train", overrides), "train")
    assert needle in str(e.value)


def test_unknown_recipe_and_misspelt_keys_are_refused_by_composition(cfg_of):
    options = r"(?s)quant/int9.*Available options in .quant.:.*int2_asym_g32"
    with pytest.raises(MissingConfigException, match=options):
        cfg_of("train", ["quant=int9"])
    with pytest.raises(ConfigCompositionException, match="bitz"):
        cfg_of("train", ["quant.bitz=2"])


def test_a_joblib_sweep_records_failed_members_and_the_report_keeps_the_others(
        trained, corpus, tmp_path):
    import subprocess
    import sys

    results, _ = trained
    missing = tmp_path / "missing.ckpt"
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "asrquant.cli.eval", "-m",
           f"ckpt={results['best_checkpoint']},{missing}", "quant=float,int4",
           f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *corpus]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.rglob("results.json"))
    # one folder per member, named by its number and overrides, never by the checkpoint's path
    folders = sorted(p.parent for p in sweep.rglob("results.json"))
    assert [f.parent for f in folders] == [sweep] * 4
    assert [f.name.split("_")[0] for f in folders] == ["0", "1", "2", "3"]
    assert all("quant=" in f.name and "ckpt" not in f.name for f in folders), folders
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
        trained, cfg_of, tmp_path, shared_dir):
    """Real read speech (FLAC, long sentences, punctuation and case) scored end to end."""
    results, _ = trained
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
    refs, _ = predictions(tmp_path / "run", "test")
    assert all(r == r.lower() and "," not in r for r in refs)  # normalised references


def test_packed_model_scores_exactly_the_fake_quant_wer_and_transcripts(cfg_of, corpus,
                                                                          tmp_path):
    from asrquant.runs import run_export

    ckpt = f"ckpt={SHIPPED}"
    ptq = run_eval(cfg_of("eval", corpus + [ckpt, "quant=int2_asym_g32_mse", "export=true"]),
                   tmp_path / "ptq")
    exp = run_export(cfg_of("export", [ckpt, "quant=int2_asym_g32_mse"]), tmp_path / "exp")
    assert exp["tensor_bytes"] == exp["predicted_bytes"]
    # eval's export=true writes the same file as asrquant-export
    written = tmp_path / "ptq" / "model.safetensors"
    assert ptq["file_bytes"] == exp["file_bytes"] == written.stat().st_size
    packed = run_eval(cfg_of("eval", corpus + [f"packed={written}"]), tmp_path / "pk")
    assert packed["mode"] == "packed"
    for name in SETS:
        refs, hyps = predictions(tmp_path / "ptq", name)
        assert all(hyps) and ptq["test"][name]["wer"] < 0.5, name  # informative
        assert predictions(tmp_path / "pk", name) == (refs, hyps)
        assert packed["test"][name]["wer"] == ptq["test"][name]["wer"]
        assert packed["test"][name]["loss"] == ptq["test"][name]["loss"]  # bit-exact logits
    # the same file as ONNX, run by onnxruntime (MatMulNBits at accuracy_level 0): the same
    # transcripts, and the loss within float rounding
    conv = run_export(cfg_of("export", [f"packed={written}", "format=onnx"]), tmp_path / "ox")
    assert conv["onnx"]["matmul_nbits_nodes"] > 0
    deployed = run_eval(cfg_of("eval", corpus + [f"onnx={conv['onnx']['path']}"]),
                        tmp_path / "onnx")
    assert deployed["mode"] == "onnx"
    for name in SETS:
        assert predictions(tmp_path / "onnx", name) == predictions(tmp_path / "pk", name)
        assert deployed["test"][name]["wer"] == packed["test"][name]["wer"]
        assert deployed["test"][name]["loss"] == pytest.approx(packed["test"][name]["loss"],
                                                               rel=1e-4)

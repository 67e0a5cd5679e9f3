"""asrquant-transcribe: audio files (any rate, mono or stereo) and manifests in, the model's own
transcripts out, from every kind of model file (float, float + recipe, QAT, packed, ONNX); a
bad file is named and the others are still written; bad arguments fail in one line."""

import io
import json
import re

import jiwer
import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional

from asrquant.cli.transcribe import main
from asrquant.data.audio import AudioError
from asrquant.data.text import normalize_text
from asrquant.export import export_packed
from asrquant.quant import CHECKPOINT_KEY, QuantSpec, attach_fake_quant, fake_quant_specs
from asrquant.runs.blocks import module_from_checkpoint
from asrquant.runs.transcribe import load_model_file, named_recipe, transcribe_files

RECIPE = "int2_asym_g32"
# (name, sample rate, channels, seconds): every file differs in rate or channel count
AUDIO = [("stereo44k.wav", 44100, 2, 0.9), ("mono8k.flac", 8000, 1, 0.6),
         ("mono16k.wav", 16000, 1, 1.2)]


@pytest.fixture(scope="module")
def models(ckpt, tmp_path_factory):
    """The tiny random float model as a Lightning .ckpt and a float .safetensors, and its
    int2_asym_g32 packed file, as asrquant-export writes them."""
    folder = tmp_path_factory.mktemp("models")
    torch.save(ckpt, folder / "float.ckpt")
    export_packed(ckpt, None, folder / "float.safetensors")
    export_packed(ckpt, named_recipe(RECIPE), folder / "int2.safetensors")
    return {"float": str(folder / "float.ckpt"), "float_st": str(folder / "float.safetensors"),
            "int2": str(folder / "int2.safetensors")}


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Paths of the AUDIO files: noise whose stereo channels differ (left loud, right quiet)."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    paths = []
    for name, rate, channels, seconds in AUDIO:
        samples = rng.standard_normal((int(rate * seconds), channels)) * [0.3, 0.02][:channels]
        soundfile.write(folder / name, samples.astype(np.float32), rate)
        paths.append(str(folder / name))
    return paths


def at_16k_mono(path: str) -> torch.Tensor:
    """The waveform the model should hear, computed here without read_audio."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return torchaudio.functional.resample(torch.from_numpy(samples.mean(axis=1)), rate, 16000)


def cli(capsys, *args):
    """(exit status, stdout lines, stderr lines) of asrquant-transcribe with `args`."""
    with pytest.raises(SystemExit) as done:
        main([*map(str, args), "--threads", "1"])
    out, err = capsys.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 1, out.splitlines(),
            err.splitlines() + ([code] if isinstance(code, str) else []))


def test_files_in_give_the_models_transcripts_of_the_audio_at_16k_mono(ckpt, models, audio,
                                                                       capsys):
    module = module_from_checkpoint(ckpt)
    want = module.transcribe([at_16k_mono(p) for p in audio], batch_size=2)
    assert any(want)  # the tiny random model says something: equal lines mean something
    for model in (models["float"], models["float_st"]):  # Lightning .ckpt, float safetensors
        status, out, err = cli(capsys, model, *audio, "--batch-size", 2)
        assert status == 0
        assert out == [f"{p}\t{t}" for p, t in zip(audio, want, strict=True)]
        assert len(err) == 1 and "3 file(s) transcribed" in err[0]  # the summary, no bar


def test_jsonl_gives_id_path_text_and_the_duration_at_the_files_own_rate(models, audio,
                                                                         tmp_path, capsys):
    status, out, _ = cli(capsys, models["float"], *audio, "--out", tmp_path / "r.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert status == 0 and out == []
    assert [(x["id"], x["audio_filepath"]) for x in lines] == [
        ("stereo44k", audio[0]), ("mono8k", audio[1]), ("mono16k", audio[2])]
    assert [x["duration"] for x in lines] == [seconds for *_, seconds in AUDIO]
    assert all("wer" not in x and "ref" not in x for x in lines)  # files bring no reference


def test_manifest_with_references_gives_each_lines_wer_and_cer_as_jiwer(ckpt, models, audio,
                                                                       tmp_path, capsys):
    hyps = module_from_checkpoint(ckpt).transcribe([at_16k_mono(p) for p in audio])
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.wav").symlink_to(audio[0])
    entries = [  # a relative path, with an id; a reference equal to the hypothesis; no text
        {"audio_filepath": "a.wav", "duration": 0.9, "text": "Hello, World!", "id": "u1"},
        {"audio_filepath": audio[1], "duration": 0.6, "text": hyps[1].upper() + " extra"},
        {"audio_filepath": audio[2], "duration": 1.2},
    ]
    (folder / "m.jsonl").write_text("\n".join(map(json.dumps, entries)) + "\n\n")
    status, _, err = cli(capsys, models["float"], folder / "m.jsonl", "--out", tmp_path / "r.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert status == 0
    assert [x["id"] for x in lines] == ["u1", audio[1].removesuffix(".flac"),
                                        audio[2].removesuffix(".wav")]
    assert lines[0]["audio_filepath"] == str(folder / "a.wav")
    assert [x["text"] for x in lines] == hyps
    refs = [normalize_text(e["text"]) for e in entries[:2]]
    assert [x["ref"] for x in lines[:2]] == refs == ["hello world", f"{hyps[1]} extra".strip()]
    for x, ref in zip(lines, refs, strict=False):
        hyp = normalize_text(x["text"])
        assert (x["wer"], x["cer"]) == (jiwer.wer(ref, hyp), jiwer.cer(ref, hyp))
    assert "wer" not in lines[2] and "cer" not in lines[2]
    scored = [normalize_text(h) for h in hyps[:2]]
    assert f"WER {jiwer.wer(refs, scored):.2%}" in err[-1] and "over the 2 file(s)" in err[-1]
    assert f"CER {jiwer.cer(refs, scored):.2%}" in err[-1]


def log_probs(module, audio):
    waves = [at_16k_mono(p) for p in audio]
    lens = torch.tensor([w.numel() for w in waves])
    with torch.no_grad():
        return module.model(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lens)[0]


def test_a_float_model_with_a_recipe_is_bit_exact_with_its_packed_file(models, audio, capsys):
    recipe = named_recipe(RECIPE)
    assert recipe.default == QuantSpec(bits=2, group_size=32)
    fake_quantized = load_model_file(models["float"], 1, recipe)
    assert fake_quant_specs(fake_quantized) == {}  # baked: quantized once, not every forward
    fake = log_probs(fake_quantized, audio)
    packed = log_probs(load_model_file(models["int2"], 1), audio)
    torch.testing.assert_close(fake, packed, rtol=0, atol=0)
    assert not torch.equal(fake, log_probs(load_model_file(models["float"], 1), audio))
    _, with_recipe, _ = cli(capsys, models["float_st"], *audio, "--quant", RECIPE)
    assert with_recipe == cli(capsys, models["int2"], *audio)[1]


def test_recipe_overrides_change_the_recipe_and_float_means_no_quantization():
    assert named_recipe(RECIPE, ["group_size=64", "symmetric=true"]).default == QuantSpec(
        bits=2, group_size=64, symmetric=True)
    assert named_recipe("float") is None


def test_a_qat_checkpoint_runs_its_own_recipe_as_its_packed_file(ckpt, audio, tmp_path,
                                                                 capsys):
    recipe = named_recipe(RECIPE)
    module = module_from_checkpoint(ckpt)
    attach_fake_quant(module, recipe)
    qat = {**ckpt, "state_dict": module.state_dict(),
           CHECKPOINT_KEY: {"mode": "qat", "recipe": recipe.to_dict(), "scales": "dynamic"}}
    torch.save(qat, tmp_path / "qat.ckpt")
    export_packed(qat, None, tmp_path / "qat.safetensors")
    torch.testing.assert_close(log_probs(load_model_file(tmp_path / "qat.ckpt", 1), audio),
                               log_probs(load_model_file(tmp_path / "qat.safetensors", 1), audio),
                               rtol=0, atol=0)
    status, _, err = cli(capsys, tmp_path / "qat.ckpt", audio[0], "--quant", "int4")
    assert status == 1 and err == [f"asrquant-transcribe: error: model file "
                                   f"'{tmp_path / 'qat.ckpt'}' is a quantization-aware (QAT) "
                                   "checkpoint: it carries its own recipe; transcribe it without "
                                   "a quant recipe (given: 'int4_sym_ch')"]


def test_an_onnx_export_gives_its_packed_files_transcripts(models, audio, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from asrquant.export.onnx import export_onnx

    export_onnx(models["int2"], tmp_path / "int2.onnx")
    status, out, _ = cli(capsys, tmp_path / "int2.onnx", *audio)
    assert status == 0 and out == cli(capsys, models["int2"], *audio)[1]
    status, _, err = cli(capsys, tmp_path / "int2.onnx", *audio, "--quant", RECIPE)
    assert status == 1 and "is an ONNX export: it carries its own recipe" in err[-1]


def test_packed_file_with_a_recipe_is_refused(models, audio, capsys):
    status, _, err = cli(capsys, models["int2"], audio[0], "--quant", RECIPE)
    assert status == 1 and err[-1].endswith("is packed (quantized): it carries its own recipe; "
                                            "transcribe it without a quant recipe (given: "
                                            "'int2_asym_g32')")


@pytest.fixture
def bad_inputs(audio, tmp_path):
    """Two good files around a file that is not audio, a missing one, a 40 ms one (too short
    for one output frame) and a manifest with a line that is not JSON."""
    (tmp_path / "junk.wav").write_bytes(b"not a wav file\n" * 20)
    soundfile.write(tmp_path / "short.wav", np.zeros(640, np.float32), 16000)
    (tmp_path / "m.jsonl").write_text("{not json\n")
    bad = [str(tmp_path / n) for n in ("junk.wav", "missing.wav", "short.wav", "m.jsonl")]
    return [audio[0], *bad, audio[2]], {bad[0]: "unreadable audio", bad[1]: "missing file",
                                        bad[2]: "too short: 640 samples", bad[3] + ":1": "not JSON"}


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_bad_file_is_named_in_one_line_and_the_others_are_still_written(
        models, audio, bad_inputs, tmp_path, capsys, policy):
    inputs, reasons = bad_inputs
    _, good, _ = cli(capsys, models["float"], audio[0], audio[2])
    status, out, err = cli(capsys, models["float"], *inputs, "--policy", policy)
    assert status == (0 if policy == "skip" else 1)
    assert out == good
    word = "skipped" if policy == "skip" else "failed"
    named = [e for e in err if e.startswith(f"asrquant-transcribe: {word}: ")]
    assert len(named) == len(reasons) == len(err) - 1  # one line each, then the summary
    for where, reason in reasons.items():
        assert any(f" {where}: {reason}" in e for e in named), (where, err)
    assert "2 file(s) transcribed" in err[-1] and "4 bad" in err[-1]
    status, out, _ = cli(capsys, models["float"], *inputs, "--policy", policy,
                         "--out", tmp_path / "r.jsonl")
    written = [json.loads(x)["audio_filepath"]
               for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert status == (0 if policy == "skip" else 1) and written == [audio[0], audio[2]]


def test_nothing_usable_fails_even_under_skip(models, tmp_path, capsys):
    status, out, err = cli(capsys, models["float"], tmp_path / "missing.wav", "--policy", "skip")
    assert status == 1 and out == [] and "no file could be transcribed" in err[-1]


def test_the_progress_bar_shows_on_a_terminal_only_and_quiet_silences_stderr(
        models, audio, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with pytest.raises(SystemExit):
        main([models["float"], *audio, "--batch-size", "1", "--threads", "1"])
    assert re.search(r"transcribing: .*\| [0-3]/3 \[", terminal.getvalue())
    terminal.seek(0)
    terminal.truncate()
    with pytest.raises(SystemExit):
        main([models["float"], *audio, "--quiet", "--threads", "1"])
    assert terminal.getvalue() == ""
    assert len(capsys.readouterr().out.splitlines()) == 6


@pytest.mark.parametrize("args, message", [
    (["--quant", "int9"], r"quant recipe 'int9' is not in .*conf/quant; allowed: float, "
                          r"int2_asym, .*int8, mixed_attn4_rest2$"),
    (["--quant", "int4", "--quant-override", "method=gptq"],
     r"quant.method='gptq' is a calibration method, which needs training data; .*asrquant-eval"),
    (["--quant", "int4", "--quant-override", "colour=red"], r"Could not override 'quant.colour'"),
    (["--quant-override", "group_size=64"], r"given without a quant recipe"),
])
def test_bad_recipe_arguments_fail_in_one_line_naming_the_value(models, audio, capsys, args,
                                                                message):
    status, out, err = cli(capsys, models["float"], audio[0], *args)
    assert status == 1 and out == []
    assert len(err) == 1 and err[0].startswith("asrquant-transcribe: error: ")
    assert re.search(message, err[0]), err[0]


def test_model_files_are_resolved_or_refused_in_one_line(audio, tmp_path, capsys):
    status, out, err = cli(capsys, "pretrained:cpu_synthetic_float", audio[2])
    assert status == 0 and len(out) == 1 and out[0].startswith(f"{audio[2]}\t")
    cases = {tmp_path / "none.ckpt": f"model file '{tmp_path / 'none.ckpt'}' does not exist",
             "pretrained:nope": "pretrained model 'nope' is not shipped; allowed: [",
             tmp_path / "m.pt": "has suffix '.pt'; allowed: .ckpt, .safetensors, .onnx"}
    (tmp_path / "m.pt").write_bytes(b"x")
    for model, message in cases.items():
        status, out, err = cli(capsys, model, audio[2])
        assert status == 1 and out == [] and len(err) == 1 and message in err[0], err


def test_python_api_returns_path_and_text_and_raises_on_a_bad_file(models, audio, tmp_path):
    got = transcribe_files(models["float"], audio[:2], threads=1)
    assert [p for p, _ in got] == audio[:2]
    with pytest.raises(AudioError, match="missing file"):
        transcribe_files(models["float"], [audio[0], tmp_path / "missing.wav"], threads=1)

"""bench/peers.py on a tiny random model: torchao (a dev dependency, never skipped) and, when
installed, HQQ and optimum-quanto, next to asrquant on the same layers."""

import importlib.util
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from asrquant.data.audio import read_audio
from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import export_packed, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import attach_fake_quant, detach_fake_quant

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)


def tiny_module():
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, num_layers=1, d_model=64, num_heads=4, ffn_dim=128,
                      subsampling_channels=8)
    return ASRModule(cfg, tok).eval()


def batches():
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 16000, generator=g) * 0.1
    return {"test": [{"audio": audio, "audio_lens": torch.tensor([16000, 12000]),
                      "texts": ["one two", "three"]}]}


def test_torchao_rows_quantize_supported_linears_and_count_bytes(tmp_path):
    m = tiny_module()
    layers = peers.linear_layers(m)
    assert not any(n.endswith("self_attn.out_proj") for n in layers)
    info = peers.torchao_quantize(m, 2, 32)
    assert info["layers"] and all(m.get_submodule(n).in_features % 32 == 0
                                  for n in info["layers"])
    float_bytes = sum(p.numel() * 4 for p in tiny_module().parameters())
    assert info["size_bytes"] < info["held_bytes"] < float_bytes
    assert peers.evaluate(m, batches())["test"]["words"] == 3
    # ours on exactly those layers: same bits and groups, float16 scales and zero points
    ours = tiny_module()
    _, o = peers.ours_quantize(ours, peers.like_for_like(info["layers"], 2, 32),
                               tmp_path / "ours.safetensors")
    assert sorted(o["layers"]) == sorted(info["layers"])
    n_q = sum(m.get_submodule(n).weight.numel() for n in info["layers"])
    n_groups = n_q // 32
    # torchao: int8 zero points; ours: float16 zero points -> one byte more per group
    assert o["size_bytes"] - info["size_bytes"] == n_groups


@pytest.mark.parametrize("peer", ["hqq", "optimum.quanto"])
def test_optional_peers(peer):
    pytest.importorskip(peer)
    m = tiny_module()
    info = peers.hqq_quantize(m, 4, 32) if peer == "hqq" else peers.quanto_quantize(m, 4)
    assert info["layers"]
    assert peers.evaluate(m, batches())["test"]["utterances"] == 2


class Scripted:
    """Stands in for an ASRModule whose model emits frames that greedy-decode to `hyps`;
    frames past each utterance's length decode to "x" (counted only if lengths are ignored)."""

    def __init__(self, hyps: list[str]):
        self.tokenizer = CharTokenizer()
        paths = [[i for c in h for i in (self.tokenizer.encode(c)[0], 0)] for h in hyps]
        frames = max(map(len, paths)) + 4
        x = self.tokenizer.encode("x")[0]
        self.log_probs = torch.zeros(len(hyps), frames, self.tokenizer.vocab_size)
        for b, path in enumerate(paths):
            ids = path + [x] * (frames - len(path))
            self.log_probs[b, torch.arange(frames), torch.tensor(ids)] = 1.0
        self.lens = torch.tensor([len(p) for p in paths])

    def eval(self):
        return self

    def model(self, audio, audio_lens):
        return self.log_probs, self.lens


def test_evaluate_scores_the_corpus_as_asrquant_eval_does():
    split = {"test": [{"audio": None, "audio_lens": None, "texts": ["One, TWO!", "three"]}]}
    out = peers.evaluate(Scripted(["one too", "three"]), split)["test"]
    # one word of three wrong (corpus WER, not the mean of 1/2 and 0); one character of 12
    # (spaces count) wrong; the transcripts normalised before scoring
    assert out == {"wer": 1 / 3, "cer": 1 / 12, "words": 3, "utterances": 2}


def talking_module():
    """tiny_module with the blank made unlikely: it emits characters, so error rates depend
    on every weight (an all-blank model scores 100% whatever its weights)."""
    m = tiny_module()
    with torch.no_grad():
        m.model.ctc_head.bias[0] = -100.0
    return m


def float_file(path: Path) -> Path:
    m = talking_module()
    export_packed({"state_dict": m.state_dict(), "model_config": m.hparams["model_config"],
                   "tokenizer_state": m.tokenizer.to_state()}, None, path)
    return path


def weight_bytes_in_file(path: Path, model) -> int:
    """Bytes of the file's packed weights (codes, scales, zero points) and float parameters,
    read from the file itself; buffers such as the feature statistics left out."""
    params = {f"{n}" for n, _ in model.named_parameters()}
    with safe_open(str(path), framework="pt") as f:
        return sum(t.numel() * t.element_size()
                   for k in f.keys() if "::" in k or k in params for t in [f.get_tensor(k)])


def test_asrquant_rows_are_measured_on_their_packed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "test_batches", lambda overrides, tok, n: batches())
    out = tmp_path / "out"
    peers.main(["--model", str(float_file(tmp_path / "m.safetensors")), "--out", str(out),
                "--only", "int2 ch"])
    report = json.loads((out / "peers.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["torchao int2 ch"]["status"] == "ok"
    torchao_layers = rows["torchao int2 ch"]["quantized_layers"]
    for name, clip in (("asrquant int2 ch (torchao's layers)", "none"),
                       ("asrquant int2 ch mse (torchao's layers)", "mse")):
        row = rows[name]
        assert row["status"] == "ok" and row["quantized_layers"] == sorted(torchao_layers)
        file = Path(row["file"])
        assert file.parent == out / "packed" and row["file_bytes"] == file.stat().st_size
        assert row["held_bytes"] == weight_bytes_in_file(file, tiny_module())
        assert row["held_bytes"] == row["size_bytes"]  # the prediction holds
        # the file holds the fake-quantized model, and the row's scores are that model's
        fake = talking_module()
        attach_fake_quant(fake, peers.like_for_like(torchao_layers, 2, None, clip), strict=True)
        detach_fake_quant(fake, bake=True)
        audio = batches()["test"][0]
        with torch.no_grad():
            expected = fake.model(audio["audio"], audio["audio_lens"])[0]
            assert torch.equal(load_quantized(file).model(audio["audio"], audio["audio_lens"])[0],
                               expected)
        assert expected.argmax(-1).ne(0).any()  # it emits characters: the scores see the weights
        assert row["test"] == peers.evaluate(fake, batches())
    md = (out / "peers.md").read_text()
    assert "| torchao int2 ch |" in md and "test WER" in md
    assert "measured on their packed export" in md


def calibration_set():
    """Three utterances, other audio than the test batches: what the gptq rows calibrate on."""
    g = torch.Generator().manual_seed(2)
    return [{"audio": torch.randn(2, 16000, generator=g) * 0.1,
             "audio_lens": torch.tensor([16000, 14000]), "ids": ["c1", "c2"]},
            {"audio": torch.randn(1, 8000, generator=g) * 0.1,
             "audio_lens": torch.tensor([8000]), "ids": ["c3"]}]


def test_gptq_rows_quantize_hqqs_layers_at_the_same_size_with_other_codes(tmp_path,
                                                                         monkeypatch):
    # HQQ itself is optional: its row here only names the layers HQQ would quantize
    monkeypatch.setattr(peers, "peer_versions",
                        lambda: {"torchao": "-", "hqq": "stub", "quanto": "not available"})
    monkeypatch.setattr(peers, "hqq_quantize",
                        lambda module, bits, group: {"layers": peers.hqq_layers(module, group)})
    monkeypatch.setattr(peers, "test_batches", lambda overrides, tok, n: batches())
    asked = []
    monkeypatch.setattr(peers, "calibration_batches",
                        lambda overrides, tok, n: asked.append((overrides, n)) or calibration_set())
    out = tmp_path / "out"
    peers.main(["--model", str(float_file(tmp_path / "m.safetensors")), "--out", str(out),
                "--only", "int2 g32", "--calib-utterances", "3", "data=an4"])
    assert asked == [(["data=an4"], 3)]  # read once, from the run's data config
    report = json.loads((out / "peers.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    hqq_layers = rows["hqq int2 g32"]["quantized_layers"]
    plain = rows["asrquant int2 g32 (hqq's layers)"]
    gptq = rows["asrquant int2 g32 gptq (hqq's layers)"]
    assert hqq_layers and plain["status"] == gptq["status"] == "ok"
    assert gptq["quantized_layers"] == plain["quantized_layers"] == sorted(hqq_layers)
    assert gptq["size_bytes"] == plain["size_bytes"]
    assert gptq["held_bytes"] == plain["held_bytes"] == gptq["size_bytes"]
    # same tensors, same shapes and dtypes; GPTQ picked other codes
    files = [Path(r["file"]) for r in (plain, gptq)]
    with safe_open(str(files[0]), framework="pt") as a, safe_open(str(files[1]),
                                                                  framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        codes = [k for k in a.keys() if k.endswith("::packed")]
        assert len(codes) == len(hqq_layers)
        assert any(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in codes)
    # the file holds the GPTQ-calibrated model, and the row's scores are that model's
    ptq = talking_module()
    peers.gptq_chosen(ptq, peers.like_for_like(hqq_layers, 2, 32), calibration_set())
    audio = batches()["test"][0]
    with torch.no_grad():
        expected = ptq.model(audio["audio"], audio["audio_lens"])[0]
        assert torch.equal(load_quantized(files[1]).model(audio["audio"], audio["audio_lens"])[0],
                           expected)
    assert gptq["test"] == peers.evaluate(ptq, batches())
    assert report["calib_utterances"] == 3
    md = (out / "peers.md").read_text()
    assert "| asrquant int2 g32 gptq (hqq's layers) |" in md
    assert "calibrate on 3 training utterances" in md and "the peers and all other" in md


def write_manifest(folder: Path, name: str, text: str, n: int) -> Path:
    lines = []
    for i in range(n):
        samples = (3000 * np.sin(np.arange(8000 + 800 * i) / (3 + i))).astype(np.int16)
        with wave.open(str(folder / f"{name}{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(samples.tobytes())
        lines.append(json.dumps({"audio_filepath": f"{name}{i}.wav",
                                 "duration": len(samples) / 16000, "text": text}))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibration_utterances_are_a_seeded_subset_of_train_never_test(tmp_path):
    overrides = ["data=manifest", f"data.train={write_manifest(tmp_path, 'tr', 'a b', 6)}",
                 f"data.test={write_manifest(tmp_path, 'te', 'c d', 6)}",
                 "data.dev_fraction=0"]
    calib = peers.calibration_batches(overrides, CharTokenizer(), 4)
    assert sum(len(b["ids"]) for b in calib) == 4
    assert {t for b in calib for t in b["texts"]} == {"a b"}
    again = peers.calibration_batches(overrides, CharTokenizer(), 4)
    assert [b["ids"] for b in again] == [b["ids"] for b in calib]
    # the audio as read from its file: no augmentation
    for b in calib:
        for row, (utt, n) in enumerate(zip(b["ids"], b["audio_lens"].tolist(), strict=True)):
            assert torch.equal(b["audio"][row, :n], read_audio(tmp_path / f"{utt}.wav"))

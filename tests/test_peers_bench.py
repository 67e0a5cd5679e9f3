"""bench/peers.py on a tiny random model: torchao (a dev dependency, never skipped) and, when
installed, HQQ and optimum-quanto, next to asrquant on the same layers."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config

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


def test_torchao_rows_quantize_supported_linears_and_count_bytes():
    m = tiny_module()
    layers = peers.linear_layers(m)
    assert not any(n.endswith("self_attn.out_proj") for n in layers)
    info = peers.torchao_quantize(m, 2, 32)
    assert info["layers"] and all(m.get_submodule(n).in_features % 32 == 0
                                  for n in info["layers"])
    float_bytes = sum(p.numel() * 4 for p in tiny_module().parameters())
    assert info["size_bytes"] < info["held_bytes"] < float_bytes
    out = peers.evaluate(m, batches())
    assert out["test"]["words"] == 3 and 0 <= out["test"]["wer"]
    # ours on exactly those layers: same bits and groups, float16 scales and zero points
    ours = tiny_module()
    o = peers.ours_quantize(ours, peers.like_for_like(info["layers"], 2, 32))
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


def test_the_script_writes_markdown_and_json(tmp_path, monkeypatch):
    model = tmp_path / "m.safetensors"
    monkeypatch.setattr(peers, "load_quantized", lambda path: tiny_module())
    monkeypatch.setattr(peers, "test_batches", lambda overrides, tok, n: batches())
    peers.main(["--model", str(model), "--out", str(tmp_path / "out"), "--only", "int2 ch"])
    report = json.loads((tmp_path / "out" / "peers.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["torchao int2 ch"]["status"] == "ok"
    assert rows["asrquant int2 ch (torchao's layers)"]["layers"] == rows["torchao int2 ch"][
        "layers"]
    md = (tmp_path / "out" / "peers.md").read_text()
    assert "| torchao int2 ch |" in md and "test WER" in md

"""Reliability matrix, model files: corrupt, lying, foreign or hostile checkpoints and packed
files are refused with the reason, and loading never executes code (weights_only=True for
torch.load; the packed format is safetensors, which has no code path)."""

import ast
import json
import pathlib
import pickle
import struct

import pytest
import torch
from rel_helpers import ROOT
from safetensors.torch import save_file

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import ExportError, export_packed, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, QuantRule, QuantSpec
from asrquant.runs import run_train
from asrquant.runs.blocks import load_checkpoint, module_from_checkpoint


def tiny_ckpt_dict(**overrides):
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, **{"d_model": 32, "num_layers": 1, "ffn_dim": 64,
                                                "subsampling_channels": 8, **overrides})
    module = ASRModule(cfg, tok)
    return {"state_dict": module.state_dict(), "model_config": cfg.to_dict(),
            "tokenizer_state": tok.to_state()}


class Payload:
    """Unpickling this creates `marker`: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def hostile_ckpt(path, marker, legacy=False):
    ckpt = {**tiny_ckpt_dict(), "callbacks": Payload(marker)}
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(ckpt, f)
    else:
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
def test_pickle_payload_in_a_ckpt_is_not_executed(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    path = hostile_ckpt(tmp_path / "evil.ckpt", marker, legacy)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert f"checkpoint {str(path)!r} cannot be loaded safely" in str(e.value)
    with pytest.raises((pickle.UnpicklingError, RuntimeError)):
        ASRModule.load_for_inference(path)
    assert not marker.exists()
    # the control: full unpickling would have run it
    if legacy:
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_resuming_from_a_hostile_last_ckpt_is_refused_without_running_it(
        tmp_path, corpus_cache, cfg_of, tiny_data, tiny_model):
    run = tmp_path / "run"
    marker = tmp_path / "PWNED"
    (run / "checkpoints").mkdir(parents=True)
    hostile_ckpt(run / "checkpoints" / "last.ckpt", marker)
    cfg = cfg_of("train", tiny_data + tiny_model + [f"data.synthetic.cache_dir={corpus_cache}",
                                                    "trainer.max_epochs=1"])
    with pytest.raises(ValueError, match="last.ckpt' cannot be loaded safely"):
        run_train(cfg, run)
    assert not marker.exists()


def test_resuming_a_run_folder_of_another_model_size_is_refused(tmp_path, corpus_cache, cfg_of,
                                                                 tiny_data, tiny_model):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(tiny_ckpt_dict(num_layers=2), run / "checkpoints" / "last.ckpt")
    model_only = [o for o in tiny_model if o.startswith("model.")]  # a char tokenizer here
    cfg = cfg_of("train", tiny_data + model_only + [
        f"data.synthetic.cache_dir={corpus_cache}", "tokenizer=char", "trainer.max_epochs=1"])
    with pytest.raises(ValueError) as e:
        run_train(cfg, run)
    assert "cannot resume from" in str(e.value)
    assert "model config differs {'num_layers': (2, 1)}" in str(e.value)
    assert "use a new run folder, or resume=false" in str(e.value)


def test_every_torch_load_in_the_package_is_weights_only_and_nothing_unpickles():
    """Static guard: a new torch.load without weights_only=True, or any pickle.load, fails."""
    offenders = []
    for path in sorted((ROOT / "asrquant").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name.endswith("torch.load"):
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in node.keywords)
                if not ok:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    ckpt = tiny_ckpt_dict()
    key = "model.ctc_head.weight"
    ckpt["state_dict"][key][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "nan.ckpt")
    assert f"tensor {key!r} contains NaN or Inf (a diverged run?)" in str(e.value)


def test_a_checkpoint_whose_weights_do_not_fit_its_config_names_the_tensors(tmp_path):
    ckpt = tiny_ckpt_dict()
    ckpt["model_config"] = tiny_ckpt_dict(d_model=48)["model_config"]
    with pytest.raises(ValueError) as e:
        module_from_checkpoint(ckpt)
    text = str(e.value)
    assert "checkpoint weights do not fit its own model_config" in text
    assert "size mismatch for model.ctc_head.weight" in text


def test_a_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    ckpt = tiny_ckpt_dict()
    ckpt["model_config"]["vocab_size"] = 128  # e.g. a sentencepiece model's head
    with pytest.raises(ValueError, match="vocab_size=39 but model_config.vocab_size=128"):
        module_from_checkpoint(ckpt)


def test_not_a_checkpoint_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="holds a list, not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(ValueError, match="trunc.ckpt' cannot be loaded safely"):
        load_checkpoint(tmp_path / "trunc.ckpt")


# ----------------------------------------------------------------------- packed files

RECIPE = QuantRecipe(QuantSpec(bits=2, group_size=32),
                     rules=[QuantRule("model.ctc_head.*", None)], name="int2_head_float")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    path = tmp_path_factory.mktemp("packed") / "m.safetensors"
    export_packed(tiny_ckpt_dict(), RECIPE, path)
    return path


def rewrite_header(src, dst, edit):
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return dst


def test_header_lying_about_a_shape_with_the_same_byte_count_is_caught(packed, tmp_path):
    key = "model.ctc_head.weight"

    def transpose(h):
        h[key]["shape"] = h[key]["shape"][::-1]

    bad = rewrite_header(packed, tmp_path / "bad.safetensors", transpose)
    with pytest.raises(ExportError) as e:
        load_quantized(bad)
    assert f"tensor {key!r} has shape (32, 39); the model config needs (39, 32)" in str(e.value)


def test_header_lying_about_sizes_is_refused_as_unreadable(packed, tmp_path):
    key = "model.ctc_head.weight"

    def grow(h):
        h[key]["shape"] = [h[key]["shape"][0] * 2, h[key]["shape"][1]]

    bad = rewrite_header(packed, tmp_path / "bad.safetensors", grow)
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_quantized(bad)


def test_header_lying_about_a_packed_weight_shape_is_caught(packed, tmp_path):
    key = "model.encoder.conformer_layers.0.ffn1.sequential.1.weight"

    def lie(h):
        q = json.loads(h["__metadata__"]["quantized"])
        q[key]["shape"] = [q[key]["shape"][0] * 2, q[key]["shape"][1]]
        h["__metadata__"]["quantized"] = json.dumps(q)

    bad = rewrite_header(packed, tmp_path / "bad.safetensors", lie)
    with pytest.raises(ExportError, match=f"tensor '{key}::packed' is torch.uint8"):
        load_quantized(bad)


def test_a_safetensors_file_of_another_tool_is_refused(tmp_path):
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ExportError, match="format None is not 'asrquant.packed'"):
        load_quantized(tmp_path / "other.safetensors")


def test_a_ckpt_passed_as_packed_file_is_refused_unread(tmp_path):
    marker = tmp_path / "PWNED"
    path = hostile_ckpt(tmp_path / "evil.safetensors", marker)
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_quantized(path)
    assert not marker.exists()


def test_packed_file_with_another_vocabulary_is_refused(packed, tmp_path):
    def other_alphabet(h):
        state = json.loads(h["__metadata__"]["tokenizer_state"])
        state["alphabet"] += "-+="
        h["__metadata__"]["tokenizer_state"] = json.dumps(state)

    bad = rewrite_header(packed, tmp_path / "bad.safetensors", other_alphabet)
    with pytest.raises(ValueError, match="vocab_size=42 but model_config.vocab_size=39"):
        load_quantized(bad)

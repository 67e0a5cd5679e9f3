"""Packed export: bit-exact with fake quantization, packed storage only, corrupt files refused."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import FORMAT_VERSION, ExportError, export_packed, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.quant import QuantRecipe, QuantRule, QuantSpec, attach_fake_quant
from asrquant.quant.packed import PackedConv1d, PackedLinear, PackedMultiheadAttention

RECIPES = {
    "int2_asym_g32": QuantRecipe(QuantSpec(bits=2, group_size=32), name="int2_asym_g32"),
    "int3_sym_ch_mse": QuantRecipe(QuantSpec(bits=3, symmetric=True, granularity="channel",
                                             clip="mse"), name="int3"),
    "int8_bf16": QuantRecipe(QuantSpec(bits=8, group_size=16, scale_dtype="bfloat16")),
    "int2_g128_zpu8": QuantRecipe(QuantSpec(bits=2, group_size=128, zero_point_dtype="uint8")),
    "int2_g32_dq6_zpp": QuantRecipe(QuantSpec(bits=2, group_size=32, scale_bits=6,
                                              zero_point_dtype="packed")),
    "int3_sym_g16_mse_dq3_bf16": QuantRecipe(QuantSpec(bits=3, symmetric=True, group_size=16,
                                                       clip="mse", scale_bits=3,
                                                       scale_dtype="bfloat16")),
    "mixed": QuantRecipe(QuantSpec(bits=2, group_size=32),
                         rules=(QuantRule("*.self_attn.*", QuantSpec(bits=4, group_size=64)),
                                QuantRule("model.ctc_head.*", None))),
}


def reference(ckpt, recipe):
    module = ASRModule(ckpt["model_config"], CharTokenizer())
    module.load_state_dict(ckpt["state_dict"])
    attach_fake_quant(module, recipe)
    return module.eval()


AUDIO = torch.randn(3, 12000, generator=torch.Generator().manual_seed(1))
LENS = torch.tensor([12000, 9000, 4000])
KEY = "model.encoder.conformer_layers.0.ffn1.sequential.1.weight"


@pytest.mark.parametrize("name", RECIPES)
def test_loaded_packed_model_gives_bit_exact_logits_of_the_fake_quantized_one(ckpt, tmp_path,
                                                                              name):
    recipe = RECIPES[name]
    export_packed(ckpt, recipe, tmp_path / "m.safetensors")
    packed = load_quantized(tmp_path / "m.safetensors")
    ref = reference(ckpt, recipe)
    with torch.no_grad():
        a, la = packed(AUDIO, LENS)
        b, lb = ref(AUDIO, LENS)
    assert torch.equal(la, lb)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert packed.transcribe(list(AUDIO)) == ref.transcribe(list(AUDIO))


def test_packed_modules_keep_only_packed_codes_as_weight_storage(ckpt, tmp_path):
    export_packed(ckpt, RECIPES["mixed"], tmp_path / "m.safetensors")
    m = load_quantized(tmp_path / "m.safetensors")
    layer = m.model.encoder.conformer_layers[0]
    assert isinstance(layer.self_attn, PackedMultiheadAttention)
    assert isinstance(layer.self_attn.out_proj, PackedLinear)
    assert isinstance(layer.conv_module.sequential[2], PackedConv1d)  # depthwise
    for mod in (layer.self_attn, layer.self_attn.out_proj, layer.conv_module.sequential[2]):
        assert not any(n.endswith("weight") for n, _ in mod.named_parameters(recurse=False))
    assert layer.self_attn.packed_in_proj_weight.packed.dtype == torch.uint8
    assert type(m.model.ctc_head) is torch.nn.Linear  # the rule kept it float


def test_file_is_plain_safetensors_and_sizes_follow_the_bit_width(ckpt, tmp_path):
    path = tmp_path / "m.safetensors"
    export_packed(ckpt, RECIPES["int2_asym_g32"], path)
    with safe_open(str(path), "pt") as f:  # any safetensors reader opens it
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "asrquant.packed"
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert json.loads(meta["model_config"]) == ckpt["model_config"]
    assert json.loads(meta["tokenizer_state"]) == ckpt["tokenizer_state"]
    packed = tensors[KEY + "::packed"]  # a 64 x 32 weight, 4 two-bit codes per byte
    assert packed.dtype == torch.uint8 and packed.shape == (64 * 32 // 4,)
    assert torch.equal(tensors["model.ctc_head.bias"], ckpt["state_dict"]["model.ctc_head.bias"])


def test_loading_never_unpickles(ckpt, tmp_path, monkeypatch):
    """The packed file loads with torch.load and pickle out of reach. A pickle handed to the
    loader is refused unread: tests/reliability/test_model_files.py
    (test_a_ckpt_passed_as_packed_file_is_refused_unread)."""
    path = tmp_path / "m.safetensors"
    export_packed(ckpt, RECIPES["mixed"], path)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a packed file unpickled something")

    for owner, name in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"),
                        (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(owner, name, refuse)
    packed = load_quantized(path)
    with torch.no_grad():
        a, _ = packed(AUDIO, LENS)
        b, _ = reference(ckpt, RECIPES["mixed"])(AUDIO, LENS)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def tamper(src, dst, fn, metadata_fn=None):
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    fn(tensors)
    if metadata_fn:
        metadata_fn(meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("truncated", "not a readable safetensors file"),
        ("version", "written in format version '99'; this asrquant reads versions 1, 2"),
        ("nan_scale", f"tensor '{KEY}::scale' contains NaN or Inf"),
        ("short_packed", f"tensor '{KEY}::packed' is torch.uint8 (511,)"),
        ("missing_zero_point", f"'{KEY}' lacks tensor(s) ['{KEY}::zero_point']"),
        ("bad_float_weight", "tensor 'model.ctc_head.bias' contains NaN or Inf"),
        ("wrong_model_config", "do not fit the model config"),
    ],
)
def test_corrupt_or_foreign_files_are_refused_naming_the_tensor(ckpt, tmp_path, case, needle):
    good = tmp_path / "good.safetensors"
    export_packed(ckpt, RECIPES["int2_asym_g32"], good)
    bad = tmp_path / "bad.safetensors"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "version":
        tamper(good, bad, lambda t: None, lambda m: m.update(format_version="99"))
    elif case == "nan_scale":
        tamper(good, bad, lambda t: t[KEY + "::scale"].view(-1).__setitem__(0, float("nan")))
    elif case == "short_packed":
        tamper(good, bad, lambda t: t.update({KEY + "::packed": t[KEY + "::packed"][:-1]}))
    elif case == "missing_zero_point":
        tamper(good, bad, lambda t: t.pop(KEY + "::zero_point"))
    elif case == "bad_float_weight":
        tamper(good, bad, lambda t: t["model.ctc_head.bias"].fill_(float("inf")))
    elif case == "wrong_model_config":
        def more_layers(m):
            cfg = json.loads(m["model_config"])
            cfg["num_layers"] = 3
            m["model_config"] = json.dumps(cfg)
        tamper(good, bad, lambda t: None, more_layers)
    with pytest.raises(ExportError) as e:
        load_quantized(bad)
    assert needle in str(e.value)


def test_each_packed_weight_is_decoded_once_per_forward(ckpt, tmp_path, monkeypatch):
    from asrquant.quant.packed import PackedWeight

    export_packed(ckpt, RECIPES["int2_asym_g32"], tmp_path / "m.safetensors")
    packed = load_quantized(tmp_path / "m.safetensors")
    calls = []
    decode = PackedWeight.forward
    monkeypatch.setattr(PackedWeight, "forward", lambda self: calls.append(self) or decode(self))
    with torch.no_grad():
        packed(AUDIO, LENS)
    n = sum(isinstance(m, PackedWeight) for m in packed.modules())
    assert len(calls) == n and len({id(c) for c in calls}) == n

"""Double-quantized scales (`scale_bits`) and packed zero points: exact end to end.

Per row one super-scale S at scale_dtype; per group a k-bit code c in [1, 2^k - 1] with
scale = c * S (float32); zero points optionally packed at `bits`. The quantizer, dequantize,
fake quantization and the packed modules decode the same scales, the report counts the
file's bytes exactly, and format version 2 files carry them (version 1 files still load).
"""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import ExportError, export_packed, header_bytes, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import build_model
from asrquant.quant import (
    QuantRecipe,
    QuantSpec,
    attach_fake_quant,
    build_report,
    dequantize,
    fake_quantize,
    group_layout,
    quantize,
    recipe_from_config,
)
from asrquant.quant.packed import SEP, PackedWeight, pack_module_weights, packed_state_dict
from asrquant.quant.primitives import choose_qparams, decode_scales, encode_scales, to_groups
from asrquant.quant.report import param_row

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DQ = QuantSpec(bits=2, group_size=32, scale_bits=6, zero_point_dtype="packed")


@st.composite
def dq_specs(draw):
    symmetric = draw(st.booleans())
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    clip = draw(st.sampled_from(["none", "fixed", "mse"]))
    return QuantSpec(
        bits=draw(st.integers(2 if symmetric else 1, 8)),
        symmetric=symmetric,
        granularity=granularity,
        group_size=draw(st.sampled_from([3, 8, 32])) if granularity == "group" else None,
        clip=clip,
        clip_ratio=0.8 if clip == "fixed" else 1.0,
        clip_grid=(1.0, 0.9, 0.7, 0.5),
        scale_dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        zero_point_dtype=draw(st.sampled_from([None, "uint8", "packed"])),
        scale_bits=draw(st.integers(2, 8)),
    )


@st.composite
def weights(draw):
    shape = draw(st.one_of(st.tuples(st.integers(1, 6), st.integers(1, 80)),
                           st.tuples(st.integers(1, 5), st.just(1), st.integers(1, 15)),
                           st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
                                     st.integers(1, 3))))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(shape, generator=g) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    if draw(st.booleans()):  # one row with a much wider range than the others
        w[0] *= 50
    if draw(st.booleans()):
        w.view(-1)[::2] = 0
    return w


def needed_scales(w, spec):
    """Per group the scale of the whole (unclipped) range, written out from the definition."""
    x = to_groups(w, group_layout(w.shape, spec))
    if spec.symmetric:
        return (x.abs().amax(-1) / spec.qmax)
    lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)
    return (hi - lo) / (2**spec.bits - 1)


# --- the spec ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 9, 0, 4.0, "6", True])
def test_scale_bits_outside_2_to_8_is_an_error_naming_the_value(value):
    with pytest.raises(ValueError) as e:
        QuantSpec(bits=2, scale_bits=value)
    assert f"QuantSpec.scale_bits={value!r} is invalid; allowed: null or an int in 2..8" in str(
        e.value)


def test_a_zero_point_dtype_outside_the_list_names_packed_among_the_allowed():
    with pytest.raises(ValueError, match=r"QuantSpec.zero_point_dtype='int2'.*'packed'"):
        QuantSpec(bits=2, zero_point_dtype="int2")


def test_names_say_scale_bits_and_packed_zero_points_only_when_set():
    assert DQ.name() == "int2_asym_g32_dq6_zpp"
    assert QuantSpec(bits=4, symmetric=True, granularity="channel", scale_bits=4).name() == \
        "int4_sym_ch_dq4"
    assert QuantSpec(bits=2, group_size=32, zero_point_dtype="packed").name() == "int2_asym_g32_zpp"
    assert QuantSpec(bits=2, group_size=32).name() == "int2_asym_g32"


def test_scale_bits_round_trips_and_old_dicts_without_it_load_as_none():
    assert QuantSpec.from_dict(DQ.to_dict()) == DQ
    old = QuantSpec(bits=2, group_size=32).to_dict()
    del old["scale_bits"]  # a spec written before the field existed
    assert QuantSpec.from_dict(old).scale_bits is None


def test_a_hydra_recipe_takes_scale_bits():
    recipe = recipe_from_config({"name": "x", "bits": 2, "group_size": 32, "scale_bits": 5,
                                 "zero_point_dtype": "packed"})
    assert recipe.default.scale_bits == 5 and recipe.name == "int2_asym_g32_dq5_zpp"


# --- the math ------------------------------------------------------------------------------

@SETTINGS
@given(dq_specs(), weights())
def test_decoded_scales_are_never_below_the_scale_the_range_needs(spec, w):
    """Without clipping every group's grid covers its range: c * S >= the unclipped scale."""
    spec = QuantSpec(**{**spec.to_dict(), "clip": "none", "clip_ratio": 1.0})
    qt = quantize(w, spec)
    assert bool((qt.float_scale() >= needed_scales(w, spec)).all())


@SETTINGS
@given(dq_specs(), weights())
def test_scale_codes_are_k_bit_and_the_smallest_that_cover_the_needed_scale(spec, w):
    spec = QuantSpec(**{**spec.to_dict(), "clip": "none", "clip_ratio": 1.0})
    qt = quantize(w, spec)
    layout = group_layout(w.shape, spec)
    assert qt.scale.dtype == torch.uint8 and qt.scale.shape == (layout.rows, layout.n_groups)
    assert qt.super_scale.dtype == spec.torch_scale_dtype and qt.super_scale.shape == (
        layout.rows,)
    codes = qt.scale.long()
    assert int(codes.min()) >= 1 and int(codes.max()) <= 2**spec.scale_bits - 1
    below = decode_scales(codes - 1, qt.super_scale.unsqueeze(-1))  # one code less
    need = needed_scales(w, spec)
    assert bool(((codes == 1) | (below < need)).all())


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_each_rows_widest_group_gets_the_top_code_with_float16_super_scales(k):
    w = torch.randn(8, 200, generator=torch.Generator().manual_seed(k)) * torch.logspace(
        -1, 1, 8).unsqueeze(1)
    qt = quantize(w, QuantSpec(bits=2, group_size=32, scale_bits=k))
    assert qt.scale.amax(dim=1).tolist() == [2**k - 1] * 8


def test_a_row_of_small_weights_keeps_its_code_resolution_through_a_subnormal_super_scale():
    """Range 2e-3 at 2 bits, 6-bit codes: S ~ 1e-5 is below float16's smallest normal
    (6.1e-5); flooring S there would leave the row's widest group a code near 11, not 63."""
    w = torch.randn(4, 128, generator=torch.Generator().manual_seed(0)) * 4e-4
    qt = quantize(w, DQ)
    assert bool((qt.super_scale < torch.finfo(torch.float16).tiny).all())
    assert qt.scale.amax(dim=1).tolist() == [63] * 4
    assert bool((qt.float_scale() >= needed_scales(w, DQ)).all())


def test_a_float32_quotient_that_rounds_down_onto_an_integer_still_gets_a_covering_code():
    """0.46892950 / 0.0078154914 is just above 60 but rounds to 60.0 in float32, and
    60 * S < s: ceil alone would give a grid narrower than the range."""
    spec = QuantSpec(bits=2, scale_bits=6, scale_dtype="float32")
    s = torch.tensor([0.4689294993877411])
    sup = torch.tensor([0.007815491408109665])
    assert torch.ceil(s / sup).item() == 60 and (60 * sup < s).item()  # the trap is real
    code = encode_scales(s, sup, spec)
    assert code.item() == 61 and (decode_scales(code, sup) >= s).item()


@SETTINGS
@given(dq_specs(), weights())
def test_fake_quant_equals_dequantize_of_quantize_equals_the_packed_weight(spec, w):
    fq = fake_quantize(w, spec)
    qt = quantize(w, spec)
    assert torch.equal(fq, dequantize(qt))
    assert torch.equal(PackedWeight.from_quantized(qt)(), fq)
    assert torch.equal(PackedWeight.from_quantized(qt).quantized().scale, qt.scale)


@SETTINGS
@given(dq_specs(), weights())
def test_choose_qparams_returns_the_decoded_scales_quantize_stores(spec, w):
    scale, zp, _ = choose_qparams(to_groups(w, group_layout(w.shape, spec)), spec)
    qt = quantize(w, spec)
    assert torch.equal(scale.squeeze(-1), qt.float_scale())
    assert torch.equal(qt.float_scale(), qt.scale.float() * qt.super_scale.float().unsqueeze(-1))
    if zp is not None:
        assert torch.equal(zp.squeeze(-1), qt.zero_point.float())


def test_double_quantization_costs_little_weight_error_at_6_bits():
    """Informative bound: 6-bit scale codes stay within 5% of float16 scales' squared error."""
    w = torch.randn(64, 144, generator=torch.Generator().manual_seed(0))
    plain = QuantSpec(bits=2, group_size=32)
    err = lambda spec: float((fake_quantize(w, spec) - w).square().mean())
    assert err(DQ) <= 1.05 * err(plain)


# --- packed modules: bit-exact with fake quantization ----------------------------------------

MODULES = {
    "linear": (lambda: nn.Linear(40, 24), lambda m, x: m(x), (3, 40)),
    "depthwise_conv1d": (lambda: nn.Conv1d(24, 24, 15, padding=7, groups=24),
                         lambda m, x: m(x), (2, 24, 30)),
    "conv2d": (lambda: nn.Conv2d(4, 8, 3), lambda m, x: m(x), (2, 4, 9, 9)),
    "multihead_attention": (lambda: nn.MultiheadAttention(32, 4), lambda m, x: m(x, x, x)[0],
                            (6, 2, 32)),
}
MODULE_SPECS = {
    "int2_asym_g32_dq6_zpp": DQ,
    "int3_sym_g16_mse_dq4_bf16": QuantSpec(bits=3, symmetric=True, group_size=16, clip="mse",
                                           scale_bits=4, scale_dtype="bfloat16"),
    "int4_asym_tensor_dq8_f32": QuantSpec(bits=4, granularity="tensor", scale_bits=8,
                                          scale_dtype="float32", zero_point_dtype="uint8"),
    "int2_asym_ch_clip_dq2_zpp": QuantSpec(bits=2, granularity="channel", clip="fixed",
                                           clip_ratio=0.8, scale_bits=2,
                                           zero_point_dtype="packed"),
}


def packed_weights(tensors, quantized):
    return {name: PackedWeight(tensors[name + SEP + "packed"], tensors[name + SEP + "scale"],
                               tensors.get(name + SEP + "zero_point"), info["shape"],
                               getattr(torch, info["dtype"]), QuantSpec.from_dict(info["spec"]),
                               tensors.get(name + SEP + "super_scale"))
            for name, info in quantized.items()}


@pytest.mark.parametrize("spec_name", MODULE_SPECS)
@pytest.mark.parametrize("module_name", MODULES)
def test_packed_modules_give_the_fake_quantized_outputs_bit_for_bit(module_name, spec_name):
    make, run, in_shape = MODULES[module_name]
    spec = MODULE_SPECS[spec_name]
    torch.manual_seed(0)
    model = nn.ModuleDict({"m": make()}).eval()
    x = torch.randn(in_shape)
    recipe = QuantRecipe(spec)
    tensors, quantized = packed_state_dict(model, recipe.plan(model))
    assert quantized and all((name + SEP + "super_scale" in tensors) for name in quantized)
    ref = copy.deepcopy(model)
    attach_fake_quant(ref, recipe)
    packed = copy.deepcopy(model)
    pack_module_weights(packed, packed_weights(tensors, quantized))
    with torch.no_grad():
        want, got = run(ref["m"], x), run(packed["m"], x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for name in quantized:
        w = model.state_dict()[name]
        assert torch.equal(fake_quantize(w, spec), dequantize(quantize(w, spec)))


# --- sizes and files -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, code_bytes, scale_bytes", [
    ((576, 144), 576 * 144 // 4, math.ceil(576 * 5 * 6 / 8) + 576 * 2 + 576 * 5 // 4),
    ((144, 1, 15), 144 * 15 // 4, math.ceil(144 * 6 / 8) + 144 * 2 + 144 // 4),
    ((3, 5), 4, 3 + 3 * 2 + 1),  # 18 bits of scale codes, 6 of zero points: whole bytes
])
def test_report_counts_k_bit_codes_super_scales_and_packed_zero_points_per_tensor(
        shape, code_bytes, scale_bytes):
    row = param_row("w", torch.zeros(shape), DQ)
    assert (row.code_bytes, row.scale_bytes) == (code_bytes, scale_bytes)


FILE_RECIPES = {
    "int2_asym_g32": QuantSpec(bits=2, group_size=32),
    "int2_asym_g32_zpp": QuantSpec(bits=2, group_size=32, zero_point_dtype="packed"),
    "int2_asym_g32_dq6_zpp": DQ,
    "int3_asym_g24_dq5_u8": QuantSpec(bits=3, group_size=24, scale_bits=5,
                                      zero_point_dtype="uint8"),
    "int3_sym_ch_mse_dq3_bf16": QuantSpec(bits=3, symmetric=True, granularity="channel",
                                          clip="mse", scale_bits=3, scale_dtype="bfloat16"),
    "int5_asym_tensor_dq7_zpp": QuantSpec(bits=5, granularity="tensor", scale_bits=7,
                                          zero_point_dtype="packed"),
}
AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
LENS = torch.tensor([8000, 5000])
KEY = "model.encoder.conformer_layers.0.ffn1.sequential.1.weight"  # 64 x 32


@pytest.mark.parametrize("name", FILE_RECIPES)
def test_report_bytes_equal_the_exported_files_tensor_bytes(ckpt, tmp_path, name):
    recipe = QuantRecipe(FILE_RECIPES[name])
    path = tmp_path / "m.safetensors"
    export_packed(ckpt, recipe, path)
    module = ASRModule(ckpt["model_config"], CharTokenizer())
    report = build_report(module, recipe.plan(module))
    assert path.stat().st_size - header_bytes(path) == report.stored_bytes


def test_the_file_stores_k_bit_codes_and_one_super_scale_per_row(ckpt, tmp_path):
    path = tmp_path / "m.safetensors"
    export_packed(ckpt, QuantRecipe(DQ), path)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format_version"] == "2"
        scale, sup, zp = (f.get_tensor(KEY + SEP + p) for p in ("scale", "super_scale",
                                                                 "zero_point"))
    assert scale.dtype == torch.uint8 and scale.shape == (math.ceil(64 * 1 * 6 / 8),)
    assert sup.dtype == torch.float16 and sup.shape == (64,)
    assert zp.dtype == torch.uint8 and zp.shape == (math.ceil(64 * 2 / 8),)


def rewrite(src, dst, tensors_fn=None, version=None):
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    if tensors_fn:
        tensors_fn(tensors)
    if version is not None:
        meta["format_version"] = version
    save_file(tensors, str(dst), metadata=meta)


def logits(module):
    with torch.no_grad():
        return module(AUDIO, LENS)[0]


def test_a_version_1_file_still_loads_and_decodes_as_before(ckpt, tmp_path):
    """A version 1 file is a version 2 file without the new tensors: same bytes otherwise."""
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=32))
    export_packed(ckpt, recipe, tmp_path / "v2.safetensors")
    rewrite(tmp_path / "v2.safetensors", tmp_path / "v1.safetensors", version="1")
    v1 = load_quantized(tmp_path / "v1.safetensors")
    assert torch.equal(logits(v1), logits(load_quantized(tmp_path / "v2.safetensors")))


def test_the_loaded_double_quantized_model_gives_the_fake_quantized_logits(ckpt, tmp_path):
    recipe = QuantRecipe(DQ)
    export_packed(ckpt, recipe, tmp_path / "m.safetensors")
    ref = ASRModule(ckpt["model_config"], CharTokenizer())
    ref.load_state_dict(ckpt["state_dict"])
    attach_fake_quant(ref, recipe)
    torch.testing.assert_close(logits(load_quantized(tmp_path / "m.safetensors")),
                               logits(ref.eval()), rtol=0, atol=0)


def _nan_super(t):
    t[KEY + SEP + "super_scale"][0] = float("nan")


@pytest.mark.parametrize("case, version, fn, needle", [
    ("version_3", "3", None, "written in format version '3'; this asrquant reads versions 1, 2"),
    ("v1_with_dq", "1", None, "has spec 'int2_asym_g32_dq6_zpp', which format version 1 "
                              "cannot hold"),
    ("missing_super", None, lambda t: t.pop(KEY + SEP + "super_scale"),
     f"'{KEY}' lacks tensor(s) ['{KEY}::super_scale']"),
    ("short_codes", None,
     lambda t: t.update({KEY + SEP + "scale": t[KEY + SEP + "scale"][:-1]}),
     f"tensor '{KEY}::scale' is torch.uint8 (47,); the recipe needs torch.uint8 (48,)"),
    ("super_per_group", None,
     lambda t: t.update({KEY + SEP + "super_scale": t[KEY + SEP + "super_scale"][:, None]}),
     f"tensor '{KEY}::super_scale' is torch.float16 (64, 1); the recipe needs torch.float16 "
     "(64,)"),
    ("unpacked_zero_point", None,
     lambda t: t.update({KEY + SEP + "zero_point": torch.zeros(64, 1, dtype=torch.uint8)}),
     f"tensor '{KEY}::zero_point' is torch.uint8 (64, 1); the recipe needs torch.uint8 (16,)"),
    ("nan_super", None, _nan_super, f"tensor '{KEY}::super_scale' contains NaN or Inf"),
])
def test_bad_version_2_files_are_refused_naming_the_version_or_tensor(ckpt, tmp_path, case,
                                                                      version, fn, needle):
    export_packed(ckpt, QuantRecipe(DQ), tmp_path / "good.safetensors")
    rewrite(tmp_path / "good.safetensors", tmp_path / "bad.safetensors", fn, version)
    with pytest.raises(ExportError) as e:
        load_quantized(tmp_path / "bad.safetensors")
    assert needle in str(e.value)


def test_a_super_scale_on_a_weight_without_scale_bits_is_refused(ckpt, tmp_path):
    export_packed(ckpt, QuantRecipe(QuantSpec(bits=2, group_size=32)), tmp_path / "g.safetensors")
    rewrite(tmp_path / "g.safetensors", tmp_path / "b.safetensors",
            lambda t: t.update({KEY + SEP + "super_scale": torch.ones(64, dtype=torch.float16)}))
    with pytest.raises(ExportError, match="present but the recipe of this weight has no "
                                          "scale_bits"):
        load_quantized(tmp_path / "b.safetensors")


# --- the shipped recipe --------------------------------------------------------------------

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_int2_asym_g32_dq_stays_within_2_35_bits_per_weight_on_the_cpu_model(capsys):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["quant=int2_asym_g32_dq"])
    recipe = recipe_from_config(OmegaConf.to_container(cfg.quant, resolve=True))
    model = build_model("cpu", 128)
    assert recipe.default == QuantSpec(bits=2, group_size=32, scale_bits=6,
                                       zero_point_dtype="packed")
    bits = {}
    for k in (None, 4, 6, 8):
        spec = QuantSpec(**{**recipe.default.to_dict(), "scale_bits": k})
        bits[k] = build_report(model, QuantRecipe(spec).plan(model)).effective_bits
    with capsys.disabled():
        print("\nint2 asym g32 zpp bits/weight on the cpu model by scale_bits: "
              + json.dumps({str(k): round(v, 4) for k, v in bits.items()}))
    assert bits[6] == build_report(model, recipe.plan(model)).effective_bits
    assert bits[6] <= 2.35
    assert bits[4] < bits[6] < bits[8] < bits[None]

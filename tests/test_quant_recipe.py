"""Recipes select parameters by name; attaching swaps in fake-quantized weights; reports count."""

import math
import warnings

import pytest
import torch
import torchaudio
from torch import nn

from asrquant.quant import (
    QuantRecipe,
    QuantRule,
    QuantSpec,
    attach_fake_quant,
    build_report,
    candidate_weight_names,
    detach_fake_quant,
    fake_quant_specs,
    fake_quantize,
    recipe_from_config,
)

INT2 = QuantSpec(bits=2, symmetric=False, granularity="group", group_size=8)
INT4 = QuantSpec(bits=4, symmetric=True, granularity="channel")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.depthwise = nn.Conv1d(8, 8, 5, padding=2, groups=8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ff = nn.Linear(8, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = self.depthwise(self.conv(x.transpose(1, 2))).transpose(1, 2)
        x = self.norm(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(torch.relu(self.ff(x)))


def small():
    torch.manual_seed(0)
    return Small()


def test_candidates_are_linear_conv_and_attention_weights_only():
    assert sorted(candidate_weight_names(small())) == sorted([
        "conv.weight", "depthwise.weight", "attn.in_proj_weight", "attn.out_proj.weight",
        "ff.weight", "head.weight",
    ])


def test_first_matching_rule_wins_and_none_keeps_float():
    recipe = QuantRecipe(INT2, rules=(QuantRule("head.*", None), QuantRule("re:attn\\..*", INT4),
                                      QuantRule("attn.out_proj.weight", INT2)))
    plan = recipe.plan(small())
    assert "head.weight" not in plan
    assert plan["attn.in_proj_weight"] == INT4 and plan["attn.out_proj.weight"] == INT4
    assert plan["ff.weight"] == INT2


def test_biases_norms_and_embeddings_only_when_a_rule_names_them():
    plan = QuantRecipe(INT2).plan(small())
    assert not any(n.endswith("bias") or n.startswith(("norm", "embed")) for n in plan)
    plan = QuantRecipe(INT2, rules=(QuantRule("attn.*", INT4),)).plan(small())
    assert "attn.in_proj_bias" not in plan and plan["attn.in_proj_weight"] == INT4
    with pytest.warns(UserWarning, match="embed"):  # a rule for candidates cannot name it
        QuantRecipe(INT2, rules=(QuantRule("embed.weight", INT4),)).plan(small())
    rule = QuantRule("embed.weight", INT4, candidates_only=False)
    assert QuantRecipe(INT2, rules=(rule,)).plan(small())["embed.weight"] == INT4


def test_a_rule_that_matches_nothing_warns_or_raises_when_strict():
    recipe = QuantRecipe(INT2, rules=(QuantRule("*.fnn.*", INT4),), name="typo")
    with pytest.warns(UserWarning, match=r"\['\*\.fnn\.\*'\] match no parameter"):
        recipe.plan(small())
    with pytest.raises(ValueError, match=r"fnn"):
        recipe.plan(small(), strict=True)


def test_bad_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid regex"):
        QuantRule("re:([", INT2)


def test_recipe_round_trips_through_dict():
    recipe = QuantRecipe(INT2, rules=(QuantRule("head.*", None), QuantRule("ff.*", INT4),
                                      QuantRule("norm.*", INT4, candidates_only=False)),
                         name="mixed")
    assert QuantRecipe.from_dict(recipe.to_dict()) == recipe


def test_attach_changes_what_forward_sees_but_not_the_forward_code():
    model = small()
    tokens = torch.randint(0, 10, (2, 7))
    ref = model(tokens)
    attach_fake_quant(model, QuantRecipe(INT2))
    assert torch.equal(model.ff.weight, fake_quantize(model.ff.parametrizations.weight.original,
                                                      INT2))
    out = model(tokens)
    assert out.shape == ref.shape and not torch.allclose(out, ref)
    assert set(fake_quant_specs(model)) == set(candidate_weight_names(small()))


def test_parametrized_model_trains_one_step_and_the_float_weights_change():
    model = small()
    attach_fake_quant(model, QuantRecipe(INT2))
    before = model.ff.parametrizations.weight.original.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randint(0, 10, (4, 7))).pow(2).mean()
    loss.backward()
    opt.step()
    after = model.ff.parametrizations.weight.original.detach()
    assert not torch.equal(before, after)
    assert model.attn.parametrizations.in_proj_weight.original.grad is not None


def test_detach_restores_float_weights_or_bakes_quantized_ones():
    model = small()
    float_w = model.ff.weight.detach().clone()
    attach_fake_quant(model, QuantRecipe(INT2))
    quant_w = model.ff.weight.detach().clone()
    assert len(detach_fake_quant(model, bake=False)) == 6
    assert torch.equal(model.ff.weight, float_w)
    attach_fake_quant(model, QuantRecipe(INT2))
    detach_fake_quant(model, bake=True)
    assert torch.equal(model.ff.weight, quant_w)
    assert isinstance(model.ff.weight, nn.Parameter) and fake_quant_specs(model) == {}


def test_attaching_twice_is_refused():
    model = small()
    attach_fake_quant(model, QuantRecipe(INT2))
    with pytest.raises(ValueError, match="already has fake quantization"):
        attach_fake_quant(model, QuantRecipe(INT2))


def test_report_totals_agree_with_a_hand_count():
    model = nn.Sequential(nn.Linear(20, 6), nn.Conv1d(6, 4, 3))
    recipe = QuantRecipe(
        QuantSpec(bits=2, symmetric=False, granularity="group", group_size=8,
                  scale_dtype="float16"),
        rules=(QuantRule("1.weight", QuantSpec(bits=4, symmetric=True, granularity="channel",
                                               scale_dtype="float32")),),
    )
    report = attach_fake_quant(model, recipe)
    # Linear 6x20 at 2 bits: 120 codes -> 30 bytes; 3 groups per row (8, 8, 4) -> 18 groups,
    # each an fp16 scale + fp16 zero point -> 72 bytes.
    # Conv1d 4x6x3 at 4 bits: 72 codes -> 36 bytes; 4 channels x fp32 scale -> 16 bytes.
    # Biases 6 + 4 float32 -> 40 bytes.
    assert report.quantized_bytes == 30 + 72 + 36 + 16 + 40
    assert report.float32_bytes == 4 * (120 + 6 + 72 + 4)
    assert report.num_quantized == 192
    assert math.isclose(report.effective_bits, 8 * (30 + 72 + 36 + 16) / 192)
    assert math.isclose(report.quantized_share, 192 / 202)
    text = str(report)
    assert "0.weight" in text and "bits/quantized weight" in text


def test_real_torchaudio_conformer_is_quantized_runs_forward_and_backward():
    torch.manual_seed(0)
    model = torchaudio.models.Conformer(input_dim=32, num_heads=4, ffn_dim=64, num_layers=2,
                                        depthwise_conv_kernel_size=15)
    x, lengths = torch.randn(2, 40, 32), torch.tensor([40, 31])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = attach_fake_quant(model, QuantRecipe(INT2))
    names = {r.name for r in report.quantized_rows}
    # per layer: 2 FFNs x 2 Linear, attention in/out, conv pointwise x2 + depthwise = 9
    assert len(names) == 2 * 9
    assert "conformer_layers.1.self_attn.in_proj_weight" in names
    assert "conformer_layers.0.conv_module.sequential.2.weight" in names  # depthwise
    out, out_lengths = model(x, lengths)
    assert out.shape == (2, 40, 32) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith(".original")]
    assert len(grads) == 18 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_uint8_zero_points_cost_one_byte_per_group_in_the_report():
    model = nn.Sequential(nn.Linear(256, 4))
    f16 = build_report(model, QuantRecipe(QuantSpec(bits=2, group_size=128)).plan(model))
    u8 = build_report(model, QuantRecipe(QuantSpec(bits=2, group_size=128,
                                                   zero_point_dtype="uint8")).plan(model))
    # 1024 codes -> 256 bytes; 8 groups: fp16 scale + fp16 zero point, or + uint8 zero point.
    assert f16.rows[0].bytes == 256 + 8 * 4
    assert u8.rows[0].bytes == 256 + 8 * 3


def test_canonical_name_says_when_zero_points_are_uint8():
    recipe = recipe_from_config({"bits": 2, "group_size": 128, "zero_point_dtype": "uint8"})
    assert recipe.name == "int2_asym_g128_zpu8"
    assert recipe.default.zero_point_dtype == "uint8"
    assert recipe_from_config({"bits": 2, "group_size": 128, "zero_point_dtype": None}).name \
        == "int2_asym_g128"


def test_a_regex_rule_matches_the_whole_name_like_a_glob():
    """re: rules use re.fullmatch: a regex that matches only part of a name does not apply
    (with re.search, "re:attn" would catch every attention weight, unlike the glob "attn")."""
    assert not QuantRule("re:attn", INT4).matches("attn.in_proj_weight")
    assert QuantRule("re:attn\\..*", INT4).matches("attn.in_proj_weight")
    assert not QuantRule("attn", INT4).matches("attn.in_proj_weight")
    plan = QuantRecipe(None, rules=(QuantRule("re:(ff|head)", INT2),)).plan(small())
    assert plan == {}

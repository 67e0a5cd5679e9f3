"""Calibration PTQ: GPTQ rounding, output-aware clip, layer inputs captured by hooks."""

import copy
import dataclasses

import lightning as L
import pytest
import torch
from torch import nn

from asrquant.lightning.callbacks import QuantizationCallback
from asrquant.quant import QuantRecipe, QuantSpec, dequantize, quantize
from asrquant.quant.calibrate import CalibrationConfig, calibrate_quantize, conv_inputs
from asrquant.quant.gptq import (
    gptq_quantize,
    group_hessians,
    output_error,
    refit_scales,
    row_output_errors,
)
from asrquant.quant.packed import PackedWeight, pack_module_weights, packed_state_dict


def correlated_inputs(n_in, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) * 0.5 + torch.eye(n_in)
    return torch.randn(n, n_in, generator=g) @ mix + torch.randn(n_in, generator=g)


@pytest.mark.parametrize("spec", [QuantSpec(bits=2, group_size=8),
                                  QuantSpec(bits=3, symmetric=True, granularity="channel"),
                                  QuantSpec(bits=4, group_size=16)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_a_smaller_output_error_than_round_to_nearest(spec, act_order):
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(48)
    h = x.T @ x
    rtn = dequantize(quantize(w, spec))
    gptq = dequantize(gptq_quantize(w, h, spec, act_order=act_order))
    assert output_error(w, gptq, h) < 0.8 * output_error(w, rtn, h)


def naive_gptq(w, h, spec, damp, static_groups=True):
    """The OBQ recurrence GPTQ computes, written out: round column j with its group's RTN
    qparams, then w_F -= (w_j - q_j) / [H_F^-1]_jj * [H_F^-1]_{F,j} over the columns F not yet
    rounded, with H_F^-1 recomputed from scratch for every j. static_groups=False: a group's
    qparams are RTN's for the group's weights as they are when its first column comes."""
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0])
    h = h.double()
    w = w.clone().double()
    glen = spec.group_size
    ref = quantize(w.float(), spec)
    scale = ref.scale.double()
    zp = None if ref.zero_point is None else ref.zero_point.double()
    codes = torch.zeros_like(w)
    n = w.shape[1]
    for j in range(n):
        free = list(range(j, n))
        hinv = torch.linalg.inv(h[free][:, free])
        g = j // glen
        if not static_groups and j % glen == 0:
            now = quantize(w[:, j : j + glen].float(), dataclasses.replace(spec, group_size=glen))
            scale[:, g] = now.scale[:, 0].double()
            if zp is not None:
                zp[:, g] = now.zero_point[:, 0].double()
        s = scale[:, g]
        q = torch.round(w[:, j] * (1.0 / s))
        if zp is not None:
            q = q + zp[:, g]
        q = q.clamp(spec.qmin, spec.qmax)
        codes[:, j] = q
        deq = (q - (zp[:, g] if zp is not None else 0)) * s
        err = (w[:, j] - deq) / hinv[0, 0]
        w[:, j:] -= err.unsqueeze(1) * hinv[0].unsqueeze(0)
    return codes


def test_gptq_equals_the_naive_obq_recurrence_on_a_tiny_case():
    spec = QuantSpec(bits=2, group_size=4)
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(8, n=64, seed=4)
    h = x.T @ x
    got = gptq_quantize(w, h, spec, damp=0.01, act_order=False, block_size=3)
    want = naive_gptq(w, h, spec, damp=0.01)
    assert torch.equal(got.codes.double(), want)


def test_gptq_with_groups_chosen_on_the_way_equals_the_naive_recurrence():
    """static_groups=False: qparams from the compensated weights; the lazy block updates
    must give a group the same weights the column-by-column recurrence sees (block_size 3
    splits groups of 4 across blocks)."""
    spec = QuantSpec(bits=2, group_size=4)
    w = torch.randn(5, 10, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(10, n=64, seed=4)
    h = x.T @ x
    got = gptq_quantize(w, h, spec, damp=0.01, act_order=False, block_size=3,
                        static_groups=False)
    want = naive_gptq(w, h, spec, damp=0.01, static_groups=False)
    assert torch.equal(got.codes.double(), want)
    assert not torch.equal(got.scale, quantize(w, spec).scale)  # the groups did move


@pytest.mark.parametrize("act_order", [False, True])
def test_groups_chosen_on_the_way_do_not_depend_on_the_block_size(act_order):
    spec = QuantSpec(bits=2, group_size=8)
    w = torch.randn(6, 30, generator=torch.Generator().manual_seed(5))
    x = correlated_inputs(30, seed=6)
    runs = [gptq_quantize(w, x.T @ x, spec, act_order=act_order, block_size=b,
                          static_groups=False) for b in (1, 7, 128)]
    for qt in runs[1:]:
        assert torch.equal(qt.codes, runs[0].codes) and torch.equal(qt.scale, runs[0].scale)
        assert torch.equal(qt.zero_point, runs[0].zero_point)
    packed = PackedWeight.from_quantized(runs[0])  # ordinary codes: the packed file decodes them
    assert torch.equal(packed(), dequantize(runs[0]))


def test_refit_scales_equal_least_squares_on_the_calibration_outputs():
    """float32 scales (no rounding): per row the scales solve min ||X w - X w^(s)|| with
    w^_i = s_g(i) (q_i - z_g(i)), here by lstsq on the design matrix X v_g."""
    spec = QuantSpec(bits=2, group_size=8, scale_dtype="float32")
    w = torch.randn(5, 20, generator=torch.Generator().manual_seed(3))  # 3 groups, last padded
    x = correlated_inputs(20, seed=4).double()
    qt = gptq_quantize(w, (x.T @ x).float(), spec)
    got = refit_scales(w, qt, (x.T @ x).float())
    assert torch.equal(got.codes, qt.codes) and torch.equal(got.zero_point, qt.zero_point)
    group_of = torch.arange(20) // 8
    v = qt.codes.double() - qt.zero_point.double()[:, group_of]
    for r in range(5):
        design = torch.stack([x @ (v[r] * (group_of == g)) for g in range(3)], dim=1)
        want = torch.linalg.lstsq(design, x @ w[r].double()).solution
        assert torch.allclose(got.scale[r].double(), want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("spec", [QuantSpec(bits=2, group_size=8),
                                  QuantSpec(bits=2, group_size=8, symmetric=True),
                                  QuantSpec(bits=2, group_size=8, scale_bits=6),
                                  QuantSpec(bits=3, symmetric=True, granularity="channel")])
def test_refine_never_raises_a_rows_output_error_and_lowers_the_total(spec):
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(7))
    x = correlated_inputs(40, seed=8)
    h = x.T @ x
    plain = gptq_quantize(w, h, spec)
    errs = [row_output_errors(w, dequantize(plain), h)]
    for rounds in (1, 3):
        qt = gptq_quantize(w, h, spec, refine=rounds)
        assert qt.codes.dtype == plain.codes.dtype and qt.scale.dtype == plain.scale.dtype
        assert int(qt.codes.min()) >= spec.qmin and int(qt.codes.max()) <= spec.qmax
        errs.append(row_output_errors(w, dequantize(qt), h))
        assert bool((errs[-1] <= errs[0]).all())
        packed = PackedWeight.from_quantized(qt)  # ordinary codes and (super-)scales
        assert torch.equal(packed(), dequantize(qt))
    assert errs[1].sum() < 0.95 * errs[0].sum()
    assert errs[2].sum() <= errs[1].sum()


def test_refine_with_a_per_row_hessian_and_bad_values_named():
    w = torch.randn(6, 9, generator=torch.Generator().manual_seed(2))
    xs = [correlated_inputs(9, seed=s) for s in range(6)]
    h = torch.stack([x.T @ x for x in xs])
    spec = QuantSpec(bits=2, group_size=16)
    plain, refined = gptq_quantize(w, h, spec), gptq_quantize(w, h, spec, refine=2)
    assert output_error(w, dequantize(refined), h) < output_error(w, dequantize(plain), h)
    with pytest.raises(ValueError, match="refine=-1.*integer >= 0"):
        gptq_quantize(w, h, spec, refine=-1)
    with pytest.raises(ValueError, match="refine=2 needs GPTQ codes; method='awq_clip'"):
        CalibrationConfig("awq_clip", refine=2)
    with pytest.raises(ValueError, match="refine=1.5"):
        CalibrationConfig(refine=1.5)


def test_groups_chosen_on_the_way_refuse_double_quantized_scales():
    with pytest.raises(ValueError, match="static_groups=False.*scale_bits=6"):
        gptq_quantize(torch.randn(4, 64), torch.eye(64),
                      QuantSpec(bits=2, group_size=32, scale_bits=6), static_groups=False)


def test_gptq_keeps_the_qparams_round_to_nearest_would_store():
    spec = QuantSpec(bits=2, group_size=8)
    w = torch.randn(6, 20)
    h = correlated_inputs(20).T @ correlated_inputs(20)
    got, rtn = gptq_quantize(w, h @ h.T, spec, act_order=True), quantize(w, spec)
    assert torch.equal(got.scale, rtn.scale) and torch.equal(got.zero_point, rtn.zero_point)
    assert got.codes.dtype == rtn.codes.dtype and got.codes.shape == w.shape
    assert int(got.codes.min()) >= spec.qmin and int(got.codes.max()) <= spec.qmax


def test_a_per_row_hessian_gives_each_row_its_own_compensation():
    spec = QuantSpec(bits=2, group_size=32)
    w = torch.randn(6, 1, 7)  # a depthwise conv: one Hessian per channel
    xs = torch.stack([correlated_inputs(7, n=100, seed=s) for s in range(6)])
    h = xs.transpose(1, 2) @ xs
    per_row = dequantize(gptq_quantize(w, h, spec))
    for r in range(6):  # row r alone, with its own Hessian, gives the same codes
        alone = dequantize(gptq_quantize(w[r : r + 1], h[r], spec))
        assert torch.equal(per_row[r : r + 1], alone)


def test_a_hessian_of_the_wrong_shape_is_refused_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(8, 8\)"):
        gptq_quantize(torch.randn(4, 8), torch.eye(5), QuantSpec(bits=2, group_size=4))


def test_output_aware_clip_is_never_worse_in_output_error_than_no_clip():
    g = torch.Generator().manual_seed(5)
    for spec in (QuantSpec(bits=2, granularity="channel"), QuantSpec(bits=3, symmetric=True,
                                                                      granularity="channel")):
        w = torch.randn(16, 32, generator=g) * torch.rand(1, 32, generator=g) * 3
        x = correlated_inputs(32, seed=6)
        h = x.T @ x
        plain = dequantize(quantize(w, spec))
        aware = dequantize(quantize(w, dataclasses.replace(spec, clip="mse"),
                                    hessian=group_hessians(h, w.shape, spec)))
        assert output_error(w, aware, h) <= output_error(w, plain, h)
        assert output_error(w, aware, h) < output_error(w, plain, h)  # it found a better clip


def test_with_groups_output_aware_clip_minimises_each_groups_block_error():
    spec = QuantSpec(bits=2, group_size=8, clip="mse")
    w = torch.randn(4, 24)
    x = correlated_inputs(24, seed=7)
    hg = group_hessians(x.T @ x, w.shape, spec)
    assert hg.shape == (3, 8, 8)
    assert torch.allclose(hg[1], (x.T @ x)[8:16, 8:16])
    for ratio_spec in (dataclasses.replace(spec, clip="none"),
                       dataclasses.replace(spec, clip="fixed", clip_ratio=0.7)):
        aware = dequantize(quantize(w, spec, hessian=hg)) - w
        other = dequantize(quantize(w, ratio_spec)) - w
        for gi in range(3):
            sl = slice(8 * gi, 8 * gi + 8)
            e_a = torch.einsum("ri,ij,rj->r", aware[:, sl], hg[gi], aware[:, sl])
            e_o = torch.einsum("ri,ij,rj->r", other[:, sl], hg[gi], other[:, sl])
            assert bool((e_a <= e_o * (1 + 1e-5) + 1e-6).all())


@pytest.mark.parametrize("conv", [nn.Conv1d(6, 10, 1), nn.Conv1d(6, 4, 3, padding=1, stride=2),
                                  nn.Conv2d(2, 5, 3, stride=2), nn.Conv1d(6, 6, 5, padding=2,
                                                                          groups=6)])
def test_conv_inputs_are_the_im2col_rows_whose_product_is_the_convolution(conv):
    x = torch.randn(2, conv.in_channels, *((9, 11) if isinstance(conv, nn.Conv2d) else (13,)))
    cols = conv_inputs(conv, x)
    w = conv.weight.reshape(conv.out_channels, -1)
    y = conv(x) - conv.bias.reshape(1, -1, *([1] * (x.dim() - 2)))
    if conv.groups == 1:  # (N, in*k): rows ordered (batch, position)
        got = (cols @ w.T).reshape(x.shape[0], -1, conv.out_channels)
        want = y.flatten(2).transpose(1, 2)
    else:  # depthwise: (channels, N, k)
        got = torch.einsum("cnk,ck->cn", cols, w)
        want = y.transpose(0, 1).reshape(conv.out_channels, -1)
    assert torch.allclose(got, want, atol=1e-5)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2)
        self.conv = nn.Conv1d(d, d, 3, padding=1, groups=d)
        self.ff = nn.Linear(d, d)

    def forward(self, x):  # (T, B, d)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.conv(x.permute(1, 2, 0)).permute(2, 0, 1)
        return x + self.ff(torch.relu(x))


class Tiny(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.front = nn.Conv2d(1, 4, 3, stride=2)
        self.proj = nn.Linear(4 * 7, d)
        self.layers = nn.ModuleList([Block(d), Block(d)])
        self.head = nn.Linear(d, 5)

    def forward(self, feats):  # (B, T, 16)
        x = torch.relu(self.front(feats.unsqueeze(1)))  # (B, 4, T', 7)
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2)).transpose(0, 1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def tiny_batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 21, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", ["gptq", "awq_clip", "gptq_awq_clip"])
def test_calibration_quantizes_every_planned_weight_and_beats_rtn_on_the_outputs(method):
    torch.manual_seed(0)
    model = Tiny().eval()
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=8))
    plan = recipe.plan(model)
    assert "layers.0.attn.out_proj.weight" in plan and "front.weight" in plan
    batches = tiny_batches()
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches])
    rtn = copy.deepcopy(model)
    calibrate_quantize(rtn, plan, batches, lambda m, b: m(b), CalibrationConfig("rtn"))
    cal = copy.deepcopy(model)
    chosen = calibrate_quantize(cal, plan, batches, lambda m, b: m(b), CalibrationConfig(method))
    assert set(chosen) == set(plan)
    for name, qt in chosen.items():  # the model holds exactly the decoded codes
        assert torch.equal(cal.get_parameter(name).detach(), dequantize(qt))
    with torch.no_grad():
        err_rtn = (torch.cat([rtn(b) for b in batches]) - ref).square().mean()
        err_cal = (torch.cat([cal(b) for b in batches]) - ref).square().mean()
    assert err_cal < err_rtn


def test_packed_model_from_calibrated_codes_equals_the_calibrated_model_exactly():
    torch.manual_seed(0)
    model = Tiny().eval()
    plan = QuantRecipe(QuantSpec(bits=2, group_size=8)).plan(model)
    cal = copy.deepcopy(model)
    chosen = calibrate_quantize(cal, plan, tiny_batches(), lambda m, b: m(b))
    tensors, meta = packed_state_dict(model, plan, chosen)  # the float model + chosen codes
    packed = copy.deepcopy(model)
    weights = {}
    for name in plan:
        pw = PackedWeight.from_quantized(chosen[name])
        assert torch.equal(pw.packed, tensors[name + "::packed"])
        weights[name] = pw
    pack_module_weights(packed, weights)
    for name in plan:  # every decoded weight equals the calibrated one bit for bit
        mod, _, attr = name.rpartition(".")
        assert torch.equal(getattr(packed.get_submodule(mod), attr), cal.get_parameter(name))
    x = tiny_batches(1, seed=9)[0]
    with torch.no_grad():  # outputs: float rounding only (MultiheadAttention may take its
        # fused fast path with plain parameters, never with decoded ones)
        assert torch.allclose(packed(x), cal(x), atol=1e-5, rtol=0)


def test_a_module_the_forward_never_calls_is_named():
    model = Tiny()
    model.unused = nn.Linear(3, 3)
    plan = QuantRecipe(QuantSpec(bits=4, group_size=8)).plan(model)
    with pytest.raises(ValueError, match="never calls.*unused"):
        calibrate_quantize(model, plan, tiny_batches(1), lambda m, b: m(b))


class TwoInOne(nn.Module):
    """Two Linears inside one numbered block: a stage of its own each only with
    sequential="module"."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(12, 12), nn.Tanh(),
                                                   nn.Linear(12, 6))])

    def forward(self, x):
        return self.blocks[0](x)


@pytest.mark.parametrize("sequential", ["block", "module"])
def test_a_module_stage_sees_the_quantized_layers_before_it_in_its_block(sequential):
    torch.manual_seed(0)
    model = TwoInOne()
    first, second = model.blocks[0][0], model.blocks[0][2]
    float_first, float_second = first.weight.detach().clone(), second.weight.detach().clone()
    spec = QuantSpec(bits=2, group_size=4)
    batches = [correlated_inputs(12, n=50, seed=s) for s in range(2)]
    plan = {"blocks.0.0.weight": spec, "blocks.0.2.weight": spec}
    out = calibrate_quantize(model, plan, batches, lambda m, b: m(b),
                             CalibrationConfig(sequential=sequential))
    w1 = float_first if sequential == "block" else dequantize(out["blocks.0.0.weight"])
    x2 = torch.cat([torch.tanh(b @ w1.T + first.bias) for b in batches]).detach()
    h = (x2.T.double() @ x2.double() / len(x2)).float()
    want = gptq_quantize(float_second, h, spec, act_order=True)
    assert torch.equal(out["blocks.0.2.weight"].codes, want.codes)


def test_float_target_solves_least_squares_against_the_float_inputs():
    from asrquant.quant.calibrate import _target
    g = torch.Generator().manual_seed(11)
    w = torch.randn(4, 12, generator=g)
    x_float = correlated_inputs(12, seed=12)
    x = x_float + 0.3 * torch.randn(x_float.shape, generator=g)  # the quantized model's inputs
    v = _target(w, x.T @ x, x.T @ x_float, damp=0.0)
    want = torch.linalg.lstsq(x.double(), (x_float @ w.T).double()).solution.T
    assert torch.allclose(v.double(), want, rtol=0, atol=1e-4)
    assert torch.equal(_target(w, x.T @ x, x.T @ x, damp=0.01), w)  # inputs agree: w itself
    depthwise = _target(w, torch.stack([x.T @ x] * 4), torch.stack([x.T @ x_float] * 4), 0.0)
    assert torch.allclose(depthwise, v, rtol=0, atol=1e-5)  # one Hessian per row


def test_float_target_matches_the_float_model_better_and_leaves_the_first_stage_alone():
    torch.manual_seed(0)
    model = Tiny().eval()
    plan = QuantRecipe(QuantSpec(bits=2, group_size=8)).plan(model)
    batches = tiny_batches(8)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches])
    errs, chosen = {}, {}
    for target in ("quantized", "float"):
        cal = copy.deepcopy(model)
        chosen[target] = calibrate_quantize(cal, plan, batches, lambda m, b: m(b),
                                            CalibrationConfig(target=target))
        for name, qt in chosen[target].items():  # float weights were only swapped in and out
            assert torch.equal(cal.get_parameter(name).detach(), dequantize(qt))
        with torch.no_grad():
            errs[target] = (torch.cat([cal(b) for b in batches]) - ref).square().mean()
    assert torch.equal(chosen["float"]["front.weight"].codes,
                       chosen["quantized"]["front.weight"].codes)  # first stage: same inputs
    assert not torch.equal(chosen["float"]["head.weight"].codes,
                           chosen["quantized"]["head.weight"].codes)
    assert errs["float"] < 0.8 * errs["quantized"]


def test_bad_calibration_settings_name_the_value():
    with pytest.raises(ValueError, match="method='optq'.*gptq"):
        CalibrationConfig("optq")
    with pytest.raises(ValueError, match="damp=2"):
        CalibrationConfig(damp=2)
    with pytest.raises(ValueError, match="sequential='layer'.*'block', 'module'"):
        CalibrationConfig(sequential="layer")
    with pytest.raises(ValueError, match="static_groups='no'.*true or false"):
        CalibrationConfig(static_groups="no")
    with pytest.raises(ValueError, match="target='teacher'.*'quantized', 'float'"):
        CalibrationConfig(target="teacher")
    with pytest.raises(ValueError, match="target='float' needs GPTQ; method='awq_clip'"):
        CalibrationConfig("awq_clip", target="float")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_quantize(Tiny(), {}, [], lambda m, b: m(b))


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Tiny()
        self.seen = None

    def forward(self, feats):
        return self.net(feats)

    def test_step(self, batch, batch_idx):
        self.seen = self.net.head.weight.detach().clone()
        self.log("out", self(batch["feats"]).mean())


def test_callback_ptq_with_gptq_calibrates_on_the_given_batches_then_restores(tmp_path):
    torch.manual_seed(0)
    module = Regressor()
    float_head = module.net.head.weight.detach().clone()
    data = torch.utils.data.DataLoader([{"feats": b, "unused": torch.zeros(1)}
                                        for b in tiny_batches(2)], batch_size=None)
    cb = QuantizationCallback(QuantRecipe(QuantSpec(bits=2, group_size=8)), mode="ptq",
                              calibration=CalibrationConfig("gptq"), calibration_data=data,
                              progress=False)
    trainer = L.Trainer(callbacks=[cb], logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.test(module, dataloaders=data)
    assert cb.chosen is not None and "net.head.weight" in cb.chosen
    assert torch.equal(module.seen, dequantize(cb.chosen["net.head.weight"]))
    assert torch.equal(module.net.head.weight, float_head)  # restored after testing
    assert cb.report.num_quantized == sum(p.numel() for n, p in module.named_parameters()
                                          if n in cb.chosen)


def test_calib_bench_reports_the_largest_stage_hessians_exactly(capsys):
    import importlib.util
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "calib_bench.py"
    spec = importlib.util.spec_from_file_location("calib_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--size", "cpu", "--utterances", "2", "--seconds", "1", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    # cpu size (d=144, ffn 576, kernel 15, 64 subsampling channels), float64 sums: a
    # Conformer layer holds per ffn 144^2 + 576^2, in_proj and out_proj 144^2 each, the
    # pointwise convs 144^2 each, the depthwise conv 144 x 15^2; the subsampling Linear
    # alone (64 channels x 19 mel bins = 1216 inputs; 1216^2 = 1.48 M against a layer's
    # 2 * (144^2 + 576^2) + 4 * 144^2 + 144 * 15^2 = 0.82 M) holds more
    assert out["max_stage_hessian_mb"] == pytest.approx(8 * 1216**2 / 1e6)
    assert out["stages"] == 4 + 4  # 2 convs, the subsampling Linear, 4 layers, the head
    assert out["peak_rss_after_calibration_mb"] >= out["peak_rss_after_build_mb"] > 0


@pytest.mark.parametrize("command, override, message", [
    ("eval", "quant.method=optq", r"quant.method='optq'.*gptq"),
    ("eval", "calib.damp=-1", r"calib.damp=-1"),
    ("eval", "calib.num_utterances=0", r"calib.num_utterances=0"),
    ("eval", "calib.refine=-2", r"calib.refine=-2"),
    ("train", "qat.scales=lsq", r"qat.scales='lsq'.*learned"),
    ("train", "qat.kd_weight=-0.5", r"qat.kd_weight=-0.5"),
    ("train", "qat.kd_temperature=0", r"qat.kd_temperature=0"),
])
def test_bad_calibration_and_qat_settings_fail_validation_naming_the_key(cfg_of, command,
                                                                         override, message):
    from asrquant.runs import validate_config
    extra = ["ckpt=/nonexistent.ckpt"] if command == "eval" else []
    cfg = cfg_of(command, ["quant=int2_asym_g32", override, *extra])
    with pytest.raises(ValueError, match=message):
        validate_config(cfg, command)


def test_refine_labels_the_method_and_needs_a_gptq_method(cfg_of):
    from asrquant.runs import validate_config
    from asrquant.runs.common import method_label, qat_label
    cfg = cfg_of("train", ["quant=int2_asym_g32", "quant.method=gptq", "calib.refine=2",
                           "qat.kd_weight=1.0"])
    assert method_label(cfg) == "gptq+refine2" and qat_label(cfg) == "gptq+refine2+kd"
    assert method_label(cfg_of("train", ["quant=int2_asym_g32", "quant.method=gptq"])) == "gptq"
    assert method_label(cfg_of("eval", ["quant=int2_asym_g32", "quant.method=gptq",
                                        "calib.target=float"])) == "gptq+float_target"
    cfg = cfg_of("eval", ["quant=int2_asym_g32", "calib.refine=1", "ckpt=/nonexistent.ckpt"])
    with pytest.raises(ValueError, match="calib.refine=1 needs GPTQ codes; method='rtn'"):
        validate_config(cfg, "eval")


def test_good_calibration_and_qat_settings_validate(cfg_of):
    from asrquant.runs import validate_config
    cfg = cfg_of("train", ["quant=int2_asym_g32", "quant.method=gptq_awq_clip",
                           "qat.scales=learned", "qat.kd_weight=1.0", "calib.act_order=false",
                           "calib.refine=2"])
    validate_config(cfg, "train")

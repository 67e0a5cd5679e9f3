"""QAT ingredients: learned step sizes (LSQ), distillation, QAT from calibration PTQ."""

import copy

import lightning as L
import pytest
import torch
from torch import nn

from asrquant.lightning.callbacks import QuantizationCallback, restore_quantization
from asrquant.lightning.module import distillation_loss
from asrquant.quant import (
    LearnedFakeQuantize,
    QuantRecipe,
    QuantSpec,
    attach_fake_quant,
    dequantize,
    fake_quantize,
    fake_quantize_learned,
    quantize,
    quantize_with,
    split_learned_qparams,
)
from asrquant.quant.calibrate import CalibrationConfig
from asrquant.quant.packed import PackedWeight
from asrquant.quant.primitives import lsq_grad_scale
from asrquant.quant.recipe import learned_quantized

SPECS = [QuantSpec(bits=2, group_size=8), QuantSpec(bits=3, symmetric=True, group_size=8),
         QuantSpec(bits=4, granularity="channel")]


@pytest.mark.parametrize("spec", SPECS)
def test_learned_fake_quant_starts_equal_to_round_to_nearest(spec):
    w = torch.randn(6, 20)
    qt = quantize(w, spec)
    zp = None if qt.zero_point is None else qt.zero_point.float()
    got = fake_quantize_learned(w, spec, qt.float_scale(), zp)
    assert torch.equal(got, fake_quantize(w, spec))
    assert torch.equal(got, dequantize(qt))


@pytest.mark.parametrize("spec", SPECS)
def test_learned_scales_pack_to_the_same_weights_bit_for_bit(spec):
    w = torch.randn(5, 24)
    qt = quantize(w, spec)
    scale = qt.float_scale() * (1 + 0.3 * torch.rand(qt.scale.shape))  # learned elsewhere
    zp = None if qt.zero_point is None else qt.zero_point.float() + 0.4
    fq = fake_quantize_learned(w, spec, scale, zp)
    packed = PackedWeight.from_quantized(learned_quantized(w, spec, scale, zp))
    assert torch.equal(packed(), fq)


def test_lsq_gradients_follow_the_formula():
    """d w^/d s per weight: (q - w/s) inside the grid, (qmin or qmax) - z outside, times
    LSQ's g; d w^/d w: 1 inside, 0 outside (Esser et al., 2020, eq. 3)."""
    spec = QuantSpec(bits=2, group_size=4)
    w = torch.tensor([[0.05, -0.4, 0.9, 2.5]], requires_grad=True)
    scale = torch.tensor([[0.25]], requires_grad=True)
    zp = torch.tensor([[1.0]], requires_grad=True)
    out = fake_quantize_learned(w, spec, scale, zp)
    out.sum().backward()
    s, z = 0.25, 1.0
    v = w.detach()[0] / s
    q = torch.round(v)
    inside = (q + z >= spec.qmin) & (q + z <= spec.qmax)
    clipped = (q + z).clamp(spec.qmin, spec.qmax) - z
    d_s = torch.where(inside, q - v, clipped)
    g = lsq_grad_scale(spec, 4)
    assert torch.allclose(scale.grad, (d_s.sum() * g).reshape(1, 1), atol=1e-6)
    assert torch.equal(w.grad[0], inside.float())
    # zero point: d/dz [(clamp(q + z) - z) * s] = -s where clamped, 0 inside
    assert torch.allclose(zp.grad, torch.tensor([[-s * float((~inside).sum())]]))


def test_lsq_scale_gradient_matches_autograd_of_the_reference_expression():
    """gradcheck-style: the custom rounding functions give the gradient of the formula the
    LSQ paper differentiates, (clamp(round(w/s)) * s) with round's derivative taken as 1."""
    spec = QuantSpec(bits=3, symmetric=True, group_size=8)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g)
    s0 = (torch.rand(3, 1, generator=g) * 0.3 + 0.2).half().float()  # stored exactly
    scale = s0.clone().requires_grad_(True)
    fake_quantize_learned(w, spec, scale, None).pow(2).sum().backward()
    ref_s = s0.clone().requires_grad_(True)
    v = w / ref_s
    r = v + (torch.round(v) - v).detach()
    out = r.clamp(spec.qmin, spec.qmax) * ref_s
    out.pow(2).sum().backward()
    assert torch.allclose(scale.grad, ref_s.grad * lsq_grad_scale(spec, 8), rtol=1e-4)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def test_learned_scales_train_and_reload_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = Net()
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=8))
    cb = QuantizationCallback(recipe, mode="qat", scales="learned", progress=False)
    trainer = L.Trainer(callbacks=[cb], max_epochs=2, logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, enable_checkpointing=False)
    start = quantize(module.body.weight.detach(), recipe.default).float_scale()
    trainer.fit(module, loader())
    fq = module.body.parametrizations.weight[0]
    assert isinstance(fq, LearnedFakeQuantize)
    assert not torch.equal(fq.scale.detach(), start)  # the optimizer moved the scales
    path = tmp_path / "qat.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    fresh = Net()
    restore_quantization(fresh, ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    x = torch.randn(4, 16)
    assert torch.equal(fresh(x), module(x))
    _, learned = split_learned_qparams(ckpt["state_dict"])
    assert set(learned) == {"body.weight", "out.weight"}


def test_qat_can_start_from_gptq_with_learned_scales_equal_to_its_codes(tmp_path):
    torch.manual_seed(0)
    module = Net()
    data = [(b[0],) for b in loader()]
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=8))
    cb = QuantizationCallback(recipe, mode="qat", scales="learned", progress=False,
                              calibration=CalibrationConfig("gptq"), calibration_data=data)
    cb.setup(L.Trainer(logger=False), module, "fit")
    for name in ("body.weight", "out.weight"):
        mod = module.get_submodule(name.rpartition(".")[0])
        # at the start, QAT's weights are exactly the GPTQ model's
        assert torch.equal(mod.weight, dequantize(cb.chosen[name]))


def test_bad_scales_mode_is_named():
    with pytest.raises(ValueError, match="scales='lsq'"):
        QuantizationCallback(QuantRecipe(QuantSpec(bits=2)), mode="qat", scales="lsq")
    with pytest.raises(ValueError, match="scales='learned'.*ptq"):
        QuantizationCallback(QuantRecipe(QuantSpec(bits=2)), mode="ptq", scales="learned")
    with pytest.raises(ValueError, match="scale_bits"):
        attach_fake_quant(nn.Linear(8, 4), QuantRecipe(QuantSpec(bits=2, group_size=4,
                                                                 scale_bits=6)),
                          scales="learned")


def test_quantize_with_refuses_double_quantized_specs():
    with pytest.raises(ValueError, match="scale_bits=6"):
        quantize_with(torch.randn(2, 8), QuantSpec(bits=2, group_size=4, scale_bits=6),
                      torch.ones(2, 2), torch.ones(2, 2))


def test_distillation_loss_is_zero_when_student_equals_teacher():
    lp = torch.randn(2, 7, 5).log_softmax(-1)
    lens = torch.tensor([7, 4])
    assert float(distillation_loss(lp, lp.clone(), lens, temperature=2.0)) == pytest.approx(0.0,
                                                                                          abs=1e-7)


def test_distillation_loss_is_the_mean_kl_over_valid_frames_only():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 6, 4, generator=g).log_softmax(-1)
    t = torch.randn(2, 6, 4, generator=g).log_softmax(-1)
    lens = torch.tensor([6, 2])
    kl = (t.exp() * (t - s)).sum(-1)
    want = (kl[0].sum() + kl[1, :2].sum()) / 8
    assert torch.allclose(distillation_loss(s, t, lens), want)
    t_pad = t.clone()
    t_pad[1, 2:] = torch.randn(4, 4).log_softmax(-1)  # padded frames never count
    assert torch.allclose(distillation_loss(s, t_pad, lens), want)
    assert float(distillation_loss(s, t, lens)) > 0


def test_distillation_gradient_pulls_the_student_towards_the_teacher():
    t = torch.randn(1, 5, 4).log_softmax(-1)
    logits = torch.zeros(1, 5, 4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    lens = torch.tensor([5])
    first = float(distillation_loss(logits.log_softmax(-1), t, lens))
    for _ in range(50):
        opt.zero_grad()
        distillation_loss(logits.log_softmax(-1), t, lens).backward()
        opt.step()
    assert float(distillation_loss(logits.log_softmax(-1), t, lens)) < 0.05 * first


def test_set_teacher_keeps_the_teacher_out_of_the_state_dict_and_optimizer():
    from asrquant.data.tokenizer import CharTokenizer
    from asrquant.lightning.module import ASRModule
    tok = CharTokenizer()
    module = ASRModule({"vocab_size": tok.vocab_size, "d_model": 16, "num_layers": 1,
                        "num_heads": 2, "ffn_dim": 32, "conv_kernel_size": 3, "n_mels": 16,
                        "freq_mask_width": 4},
                       tok)
    teacher = copy.deepcopy(module.model)
    before = set(module.state_dict())
    module.set_teacher(teacher, weight=0.5, temperature=2.0)
    assert set(module.state_dict()) == before
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="kd temperature"):
        module.set_teacher(teacher, temperature=0)


def test_the_teacher_sees_the_students_augmented_features():
    from asrquant.data.tokenizer import CharTokenizer
    from asrquant.lightning.module import ASRModule
    tok = CharTokenizer()
    cfg = {"vocab_size": tok.vocab_size, "d_model": 16, "num_layers": 1, "num_heads": 2,
           "ffn_dim": 32, "conv_kernel_size": 3, "n_mels": 16, "freq_mask_width": 8,
           "time_mask_width": 5}
    torch.manual_seed(0)
    module = ASRModule(cfg, tok)
    teacher = copy.deepcopy(module.model)
    module.set_teacher(teacher, weight=1.0)
    seen = {}
    for who, model in (("student", module.model), ("teacher", teacher)):
        orig = model.forward_features
        model.forward_features = (lambda f, n, _o=orig, _w=who:
                                  (seen.__setitem__(_w, f.clone()), _o(f, n))[1])
    module.log = lambda *a, **k: None
    module.trainer = type("T", (), {"optimizers": [torch.optim.SGD(module.parameters(), 0.1)]})()
    module.train()
    batch = {"audio": torch.randn(2, 8000), "audio_lens": torch.tensor([8000, 6000]),
             "targets": torch.tensor([[3, 4], [5, 0]]), "target_lens": torch.tensor([2, 1])}
    module.training_step(batch, 0)
    module.model.eval()
    clean, _ = module.model.compute_features(batch["audio"], batch["audio_lens"])
    assert torch.equal(seen["teacher"], seen["student"])
    assert not torch.equal(seen["student"], clean)  # SpecAugment masked some of them


def test_learned_scales_count_as_the_weights_scales_not_as_float_parameters():
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=8))
    from asrquant.quant import build_report, fake_quant_specs
    plain = build_report(model, recipe.plan(model)).totals()
    attach_fake_quant(model, recipe, scales="learned")
    learned = build_report(model, fake_quant_specs(model)).totals()
    assert learned == plain

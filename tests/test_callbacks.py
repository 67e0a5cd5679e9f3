"""QuantizationCallback in a foreign LightningModule: QAT, PTQ, logging, checkpoints."""

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from asrquant.lightning.callbacks import (
    CHECKPOINT_KEY,
    QuantizationCallback,
    restore_quantization,
)
from asrquant.quant import QuantRecipe, QuantSpec, fake_quant_specs, fake_quantize

DOC = Path(__file__).resolve().parents[1] / "docs" / "callbacks.md"
INT2 = QuantSpec(bits=2, group_size=8)


class Foreign(L.LightningModule):
    """Not an asrquant module: a two-layer regressor with its own names."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.out = nn.Linear(16, 1)
        self.seen_test_weight = None

    def forward(self, x):
        return self.out(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def test_step(self, batch, batch_idx):
        self.seen_test_weight = self.body.weight.detach().clone()
        self.log("test/mse", nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)),
                                       batch_size=16)


def trainer(tmp_path, cb, **kw):
    return L.Trainer(callbacks=[cb], logger=CSVLogger(tmp_path, name="log", version=""),
                     enable_progress_bar=False, enable_checkpointing=False,
                     default_root_dir=tmp_path, **kw)


def test_qat_trains_through_the_quantizer_of_a_foreign_module(tmp_path):
    torch.manual_seed(0)
    model = Foreign()
    before = model.body.weight.detach().clone()
    cb = QuantizationCallback(QuantRecipe(INT2), mode="qat")
    trainer(tmp_path, cb, max_steps=4).fit(model, loader())
    assert set(fake_quant_specs(model)) == {"body.weight", "out.weight"}
    original = model.body.parametrizations.weight.original
    assert not torch.equal(original, before)  # float weights were trained
    assert torch.equal(model.body.weight, fake_quantize(original, INT2))
    metrics = (tmp_path / "log" / "metrics.csv").read_text()
    assert "quant/size_mb" in metrics and "quant/effective_bits" in metrics


def test_ptq_tests_with_quantized_weights_and_restores_float(tmp_path):
    torch.manual_seed(0)
    model = Foreign()
    float_w = model.body.weight.detach().clone()
    cb = QuantizationCallback(QuantRecipe(INT2), mode="ptq")
    trainer(tmp_path, cb).test(model, loader())
    assert torch.equal(model.seen_test_weight, fake_quantize(float_w, INT2))
    assert torch.equal(model.body.weight, float_w) and not fake_quant_specs(model)
    assert cb.report.totals()["num_quantized"] == 8 * 16 + 16


def test_qat_checkpoint_holds_the_recipe_and_reloads_quantized(tmp_path):
    torch.manual_seed(0)
    model = Foreign()
    cb = QuantizationCallback(QuantRecipe(INT2, name="int2"), mode="qat")
    t = trainer(tmp_path, cb, max_steps=2)
    t.fit(model, loader())
    t.save_checkpoint(tmp_path / "q.ckpt")
    ckpt = torch.load(tmp_path / "q.ckpt", weights_only=True)
    assert ckpt[CHECKPOINT_KEY]["recipe"]["name"] == "int2"
    assert ckpt[CHECKPOINT_KEY]["report"]["num_quantized"] == 144
    fresh = Foreign()
    restore_quantization(fresh, ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))


def test_calibration_hook_may_replace_the_recipe(tmp_path):
    seen = {}

    def calibrate(trainer, module, recipe):
        seen["module"] = module
        return QuantRecipe(QuantSpec(bits=4, symmetric=True, granularity="channel"))

    model = Foreign()
    cb = QuantizationCallback(QuantRecipe(INT2), mode="ptq", calibrate=calibrate)
    trainer(tmp_path, cb).test(model, loader())
    assert seen["module"] is model
    assert {r.bits for r in cb.report.quantized_rows} == {4}


def test_bad_mode_and_recipe_are_clear_errors():
    with pytest.raises(ValueError, match=r"mode='train'.*allowed: \('qat', 'ptq'\)"):
        QuantizationCallback(QuantRecipe(INT2), mode="train")
    with pytest.raises(ValueError, match="allowed: a QuantRecipe"):
        QuantizationCallback({"bits": 2})


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
    assert (tmp_path / "qat_run" / "qat.ckpt").is_file()

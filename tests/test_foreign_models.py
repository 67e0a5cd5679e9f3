"""Models that are not ours (torchaudio architectures, random weights, no download):
`quantize_` fake or packed, `save_packed` / `load_packed` into the user's own architecture,
QAT with QuantizationCallback on a foreign LightningModule.

Each model is small (two layers, width 32-64) and built with a fixed seed; outputs are
compared with atol=0: packed modules decode the very tensor fake quantization gives.
"""

import importlib.util
import json
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
import torchaudio.models as tam
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from asrquant.export import ExportError, header_bytes, load_packed, save_packed
from asrquant.lightning.callbacks import QuantizationCallback
from asrquant.quant import (
    QuantRecipe,
    QuantRule,
    QuantSpec,
    attach_fake_quant,
    fake_quant_specs,
    original_name,
    quantize_,
)
from asrquant.quant.packed import (
    PackedConv1d,
    PackedLinear,
    PackedMultiheadAttention,
    PackedWeight,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "foreign_models.md"
INT2 = QuantRecipe(QuantSpec(bits=2, group_size=32), name="int2_asym_g32")
INT4 = QuantRecipe(QuantSpec(bits=4, group_size=128), name="int4_asym_g128")
RECIPES = {"int2_g32": INT2, "int4_g128": INT4,
           "int3_sym_ch_mse": QuantRecipe(QuantSpec(bits=3, symmetric=True, granularity="channel",
                                                    clip="mse"))}


def wav2vec2(seed=0):
    """wav2vec2-style CTC: 2 feature-extractor Conv1d, 2 transformer layers of width 64."""
    torch.manual_seed(seed)
    return tam.wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2)],
        extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=4, encoder_attention_dropout=0.0, encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=12).eval()


def emformer_rnnt(seed=0):
    """Emformer RNN-T: 2 Emformer layers of width 64; a 2-layer LSTM predictor (torchaudio's
    own LSTM cell, built from Linear layers)."""
    torch.manual_seed(seed)
    return tam.emformer_rnnt_model(
        input_dim=16, encoding_dim=32, num_symbols=10, segment_length=4, right_context_length=1,
        time_reduction_input_dim=32, time_reduction_stride=2, transformer_num_heads=2,
        transformer_ffn_dim=64, transformer_num_layers=2, transformer_dropout=0.0,
        transformer_activation="gelu", transformer_left_context_length=8,
        transformer_max_memory_size=0, transformer_weight_init_scale_strategy="depthwise",
        transformer_tanh_on_mem=True, symbol_embedding_dim=16, num_lstm_layers=2,
        lstm_layer_norm=True, lstm_layer_norm_epsilon=1e-3, lstm_dropout=0.0).eval()


def conformer(seed=0, ffn_dim=64):
    """torchaudio Conformer: 2 layers of width 32 (nn.MultiheadAttention, depthwise conv)."""
    torch.manual_seed(seed)
    return tam.Conformer(input_dim=32, num_heads=2, ffn_dim=ffn_dim, num_layers=2,
                         depthwise_conv_kernel_size=7).eval()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def run_wav2vec2(m):
    return m(torch.randn(2, 4000, generator=_gen(1)), torch.tensor([4000, 3000]))[0]


def run_emformer_rnnt(m):
    out = m(torch.randn(2, 21, 16, generator=_gen(1)), torch.tensor([21, 17]),
            torch.randint(0, 10, (2, 5), generator=_gen(2)), torch.tensor([5, 3]))
    return out[0]


def run_conformer(m):
    return m(torch.randn(2, 30, 32, generator=_gen(1)), torch.tensor([30, 20]))[0]


MODELS = {
    "wav2vec2": (wav2vec2, run_wav2vec2),
    "emformer_rnnt": (emformer_rnnt, run_emformer_rnnt),
    "conformer": (conformer, run_conformer),
}
# Modules each model must have swapped for packed ones: every layer type the issue names.
PACKED = {
    "wav2vec2": {"feature_extractor.conv_layers.0.conv": PackedConv1d,
                 "feature_extractor.conv_layers.1.conv": PackedConv1d,
                 "encoder.feature_projection.projection": PackedLinear,
                 "encoder.transformer.layers.1.attention.q_proj": PackedLinear,
                 "encoder.transformer.layers.1.feed_forward.output_dense": PackedLinear,
                 "aux": PackedLinear},
    "emformer_rnnt": {"transcriber.input_linear": PackedLinear,
                      "transcriber.transformer.emformer_layers.1.attention.emb_to_key_value":
                          PackedLinear,
                      "predictor.lstm_layers.0.x2g": PackedLinear,
                      "predictor.lstm_layers.1.p2g": PackedLinear,
                      "joiner.linear": PackedLinear},
    "conformer": {"conformer_layers.0.self_attn": PackedMultiheadAttention,
                  "conformer_layers.0.self_attn.out_proj": PackedLinear,
                  "conformer_layers.1.conv_module.sequential.0": PackedConv1d,
                  "conformer_layers.1.conv_module.sequential.2": PackedConv1d,  # depthwise
                  "conformer_layers.1.ffn2.sequential.4": PackedLinear},
}
# What stays float, and is reported so (matrices and kernels; vectors always stay float).
LEFT_FLOAT = {
    "wav2vec2": {"encoder.transformer.pos_conv_embed.conv.weight": "parametrized by "
                                                                   "['_WeightNorm']"},
    "emformer_rnnt": {"predictor.embedding.weight": "embedding table"},
    "conformer": {},
}


def float_matrices(model):
    return sorted(n for n, p in model.named_parameters() if p.dim() >= 2)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", MODELS)
def test_packed_model_gives_the_fake_quantized_outputs_bit_for_bit(name, recipe):
    build, run = MODELS[name]
    float_model, fake, packed = build(), build(), build()
    quantize_(fake, RECIPES[recipe])
    report = quantize_(packed, RECIPES[recipe], packed=True)
    with torch.no_grad():
        ref, a, b = run(float_model), run(fake), run(packed)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert not torch.equal(a, ref)  # quantization changed the outputs: neither is a no-op
    for mod_name, cls in PACKED[name].items():
        assert type(packed.get_submodule(mod_name)) is cls, mod_name
    kept = report.left_float
    assert set(kept) == set(LEFT_FLOAT[name])
    for k, why in LEFT_FLOAT[name].items():
        assert why in kept[k]
    # Only the matrices reported float remain float parameters in the packed model.
    left = [n for n in float_matrices(packed)
            if not any(n.startswith(k.rpartition(".")[0] + ".") for k in kept)]
    assert left == []


@pytest.mark.parametrize("recipe", ["int2_g32", "int4_g128"])
@pytest.mark.parametrize("name", MODELS)
def test_report_bytes_are_the_file_bytes_after_its_header(name, recipe, tmp_path):
    build, _ = MODELS[name]
    path = tmp_path / f"{name}.safetensors"
    report = save_packed(build(), path, RECIPES[recipe])
    assert path.stat().st_size - header_bytes(path) == report.stored_bytes
    assert report.stored_bytes == quantize_(build(), RECIPES[recipe], packed=True).stored_bytes
    assert report.stored_bytes < 0.4 * report.float32_bytes  # mostly 2- or 4-bit codes
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        some = next(k for k in f.keys() if k.endswith("::packed"))
        codes = f.get_tensor(some)
    assert meta["format"] == "asrquant.packed-module"
    assert codes.dtype == torch.uint8
    spec = RECIPES[recipe].default
    numel = build().get_parameter(some.removesuffix("::packed")).numel()
    assert codes.numel() == -(-numel * spec.bits // 8)  # densely packed at the bit width


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_into_a_fresh_skeleton_gives_the_same_outputs(name, tmp_path,
                                                                     monkeypatch):
    build, run = MODELS[name]
    fake = build()
    quantize_(fake, INT2)
    path = tmp_path / "m.safetensors"
    save_packed(fake, path)  # the recipe of the attached fake quantization

    def refuse(*args, **kwargs):
        raise AssertionError("loading a packed file unpickled something")

    for owner, attr in [(torch, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(owner, attr, refuse)
    from_builder = load_packed(lambda: build(seed=7), path)  # other random weights
    from_module = load_packed(build(seed=8), path)
    with torch.device("meta"):
        skeleton = build()
    from_meta = load_packed(skeleton, path)
    with torch.no_grad():
        want = run(fake)
        for loaded in (from_builder, from_module, from_meta):
            torch.testing.assert_close(run(loaded), want, rtol=0, atol=0)
    assert not from_builder.training
    for mod_name, cls in PACKED[name].items():
        assert type(from_builder.get_submodule(mod_name)) is cls, mod_name


def test_float_fake_and_packed_models_write_the_same_file(tmp_path):
    """save_packed reads codes from a float model + recipe, from attached fake quantization,
    and from packed modules: the three paths agree tensor for tensor."""
    build, _ = MODELS["wav2vec2"]
    fake, packed = build(), build()
    quantize_(fake, INT2)
    quantize_(packed, INT2, packed=True)
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    reports = [save_packed(build(), files[0], INT2), save_packed(fake, files[1], INT2),
               save_packed(packed, files[2])]
    for f, report in zip(files, reports, strict=True):
        assert f.stat().st_size - header_bytes(f) == report.stored_bytes
    a, b, c = (load_file(str(f)) for f in files)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k


def test_recipe_as_a_flat_config_dict_quantizes_like_the_recipe():
    a, b = conformer(), conformer()
    quantize_(a, {"bits": 2, "group_size": 32}, packed=True)
    quantize_(b, INT2, packed=True)
    with torch.no_grad():
        torch.testing.assert_close(run_conformer(a), run_conformer(b), rtol=0, atol=0)


def test_recurrent_weights_are_reported_left_float_in_the_report_and_the_file(tmp_path):
    """torchaudio DeepSpeech: its nn.RNN (like nn.LSTM, fused kernel reading raw weights)
    stays float, and both the report and the file say so."""
    def build(seed=0):
        torch.manual_seed(seed)
        return tam.DeepSpeech(n_feature=8, n_hidden=32, n_class=5).eval()

    model = build()
    path = tmp_path / "ds.safetensors"
    report = save_packed(model, path, INT2)
    rnn = {"bi_rnn.weight_ih_l0", "bi_rnn.weight_hh_l0", "bi_rnn.weight_ih_l0_reverse",
           "bi_rnn.weight_hh_l0_reverse"}
    assert set(report.left_float) == rnn
    assert all("RNN weight: read by a fused recurrent kernel" in w
               for w in report.left_float.values())
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["left_float"]) == report.left_float
        assert rnn <= set(f.keys())  # stored float under their own names
    x = torch.randn(2, 1, 6, 8, generator=_gen(3))
    fake = build()
    quantize_(fake, INT2)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(build, path)(x), fake(x), rtol=0, atol=0)


def test_a_weight_norm_conv_folded_before_quantizing_is_packed_and_loads_unfolded(tmp_path):
    """wav2vec2's positional conv is weight_norm-parametrized (stored as g and v): left
    float unless folded; folded, it is quantized and load_packed folds the skeleton's."""
    model = wav2vec2()
    conv = model.encoder.transformer.pos_conv_embed.conv
    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    fake = wav2vec2()
    parametrize.remove_parametrizations(fake.encoder.transformer.pos_conv_embed.conv, "weight")
    quantize_(fake, INT2)
    report = save_packed(model, tmp_path / "m.safetensors", INT2)
    assert report.left_float == {}
    loaded = load_packed(wav2vec2, tmp_path / "m.safetensors")  # weight_norm in the skeleton
    assert type(loaded.encoder.transformer.pos_conv_embed.conv) is PackedConv1d
    with torch.no_grad():
        torch.testing.assert_close(run_wav2vec2(loaded), run_wav2vec2(fake), rtol=0, atol=0)


@pytest.fixture(scope="module")
def conformer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "good.safetensors"
    save_packed(conformer(), path, INT2)
    return path


def _tamper(src, dst, tensors_fn=None, meta_fn=None):
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    if tensors_fn:
        tensors_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    save_file(tensors, str(dst), metadata=meta)


W = "conformer_layers.0.ffn1.sequential.1.weight"
B = "conformer_layers.0.ffn1.sequential.1.bias"


@pytest.mark.parametrize("case, needle", [
    ("truncated", "not a readable safetensors file"),
    ("recognizer_file", "a recognizer file; load it with asrquant.export.load_quantized"),
    ("version", "written in format version '99'; this asrquant reads versions 1"),
    ("missing_tensor", f"in the model only ['{B}']"),
    ("extra_tensor", "in the file only ['stray.bias']"),
    ("missing_zero_point", f"'{W}' lacks tensor(s) ['{W}::zero_point']"),
    ("short_codes", f"tensor '{W}::packed' is torch.uint8 (511,)"),
    ("nan", f"tensor '{B}' contains NaN or Inf"),
    ("float_dtype", f"tensor '{B}' is torch.float16 (64,); the model has torch.float32 (64,)"),
    ("unlisted_packed", "tensors of ['x.weight'] are packed but the metadata does not list"),
])
def test_bad_files_are_refused_naming_the_tensor(conformer_file, tmp_path, case, needle):
    bad = tmp_path / "bad.safetensors"
    edits = {
        "recognizer_file": (None, lambda m: m.update(format="asrquant.packed")),
        "version": (None, lambda m: m.update(format_version="99")),
        "missing_tensor": (lambda t: t.pop(B), None),
        "extra_tensor": (lambda t: t.update({"stray.bias": torch.zeros(3)}), None),
        "missing_zero_point": (lambda t: t.pop(W + "::zero_point"), None),
        "short_codes": (lambda t: t.update({W + "::packed": t[W + "::packed"][:-1].clone()}),
                        None),
        "nan": (lambda t: t[B].__setitem__(0, float("nan")), None),
        "float_dtype": (lambda t: t.update({B: t[B].half()}), None),
        "unlisted_packed": (lambda t: t.update({"x.weight::packed": torch.zeros(2,
                                                                                dtype=torch.uint8)}),
                            None),
    }
    if case == "truncated":
        bad.write_bytes(conformer_file.read_bytes()[: conformer_file.stat().st_size // 2])
    else:
        _tamper(conformer_file, bad, *edits[case])
    with pytest.raises(ExportError, match="bad.safetensors") as e:
        load_packed(conformer, bad)
    assert needle in str(e.value)


def test_a_skeleton_of_another_shape_or_architecture_is_refused(conformer_file):
    with pytest.raises(ExportError, match=f"quantized weight '{W}' is torch.float32 \\(64, "
                                          "32\\); the model's is torch.float32 \\(48, 32\\)"):
        load_packed(lambda: conformer(ffn_dim=48), conformer_file)
    with pytest.raises(ExportError, match="names module 'conformer_layers.0.ffn1.sequential.1"
                                          "', which Wav2Vec2Model lacks .*saved from "
                                          "torchaudio.models.conformer.Conformer"):
        load_packed(wav2vec2, conformer_file)
    with pytest.raises(ExportError, match="built int; allowed: an nn.Module or a callable"):
        load_packed(lambda: 3, conformer_file)
    fake = conformer()
    quantize_(fake, INT2)
    with pytest.raises(ExportError, match="the skeleton is quantized already"):
        load_packed(fake, conformer_file)
    with torch.device("meta"):
        skeleton = conformer()
        skeleton.conformer_layers[0].register_buffer("table", torch.zeros(3), persistent=False)
    with pytest.raises(ExportError, match="\\['conformer_layers.0.table'\\] of the model are "
                                          "on the meta device and not in the file"):
        load_packed(skeleton, conformer_file)


def test_save_packed_refuses_what_it_cannot_store_faithfully(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ExportError, match="the model is float and no recipe was given"):
        save_packed(conformer(), path)
    fake = conformer()
    quantize_(fake, INT2)
    with pytest.raises(ExportError, match="recipe 'int4_asym_g128' does not describe how m."
                                          "safetensors is quantized: it differs on \\['conf"):
        save_packed(fake, path, INT4)
    norms = QuantRecipe(QuantSpec(bits=4), rules=(QuantRule("*.final_layer_norm.weight",
                                                            QuantSpec(bits=8), False),))
    with pytest.raises(ExportError, match="cannot store \\['conformer_layers.0.final_layer_norm"
                                          ".weight \\(LayerNorm.weight\\)'"):
        save_packed(conformer(), path, norms)
    with pytest.raises(ValueError, match="no packed module"):
        quantize_(conformer(), norms, packed=True)
    tied = nn.ModuleDict({"norm": nn.LayerNorm(8), "proj": nn.Linear(8, 8)})
    tied["again"] = tied["norm"]  # one module under two names: its tensors twice
    with pytest.raises(ExportError, match="share memory \\(tied weights\\)"):
        save_packed(tied, path, INT2)
    assert not path.exists()  # nothing half-written


class ForeignLightningModule(L.LightningModule):
    """Someone else's LightningModule: a torchaudio Conformer, a regression loss."""

    def __init__(self):
        super().__init__()
        self.model = conformer().train()

    def training_step(self, batch, batch_idx):
        x, lengths, target = batch
        return nn.functional.mse_loss(self.model(x, lengths)[0], target)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.parametrize("scales", ["dynamic", "learned"])
def test_qat_with_the_callback_on_a_foreign_lightning_module_then_save_and_load(scales,
                                                                                tmp_path):
    module = ForeignLightningModule()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    x = torch.randn(8, 30, 32, generator=_gen(4))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        x, torch.full((8,), 30), torch.randn(8, 30, 32, generator=_gen(5))), batch_size=4)
    callback = QuantizationCallback(INT2, mode="qat", progress=False, scales=scales)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, data)
    qat = module.model.eval()
    assert fake_quant_specs(qat)  # trained through the quantizer
    trained = {original_name(k): v for k, v in qat.state_dict().items()}
    assert not torch.equal(trained[W], before[W])  # the float weights moved

    path = tmp_path / "qat.safetensors"
    report = save_packed(qat, path, INT2)
    assert path.stat().st_size - header_bytes(path) == report.stored_bytes
    loaded = load_packed(conformer, path)
    with torch.no_grad():
        want = run_conformer(qat)
        torch.testing.assert_close(run_conformer(loaded), want, rtol=0, atol=0)
        quantize_(qat, packed=True)  # the trained quantizers' codes, in place
        torch.testing.assert_close(run_conformer(qat), want, rtol=0, atol=0)
    assert isinstance(qat.conformer_layers[0].self_attn.packed_in_proj_weight, PackedWeight)


def test_attach_fake_quant_stays_the_qat_entry_point():
    """quantize_(model, recipe) is attach_fake_quant with a recipe dict allowed: same plan."""
    a, b = conformer(), conformer()
    quantize_(a, INT2)
    attach_fake_quant(b, INT2)
    assert fake_quant_specs(a) == fake_quant_specs(b) != {}


def test_the_doc_example_runs_as_written(tmp_path, monkeypatch):
    code = DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})
    assert (tmp_path / "conformer_int2.safetensors").is_file()


def test_the_size_bench_reproduces_the_tiny_table_it_wrote():
    """bench/foreign_sizes.py --size tiny: the bytes of the test models' files (data after
    the header, which follows from the format alone) are those in docs/results."""
    spec = importlib.util.spec_from_file_location("foreign_sizes",
                                                  ROOT / "bench" / "foreign_sizes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    now = bench.main(["--size", "tiny", "--threads", str(torch.get_num_threads())])
    saved = json.loads((ROOT / "docs" / "results" / "foreign_sizes_tiny.json").read_text())
    stored = lambda r: {m: (v["params"], {k: x["stored_bytes"] for k, x in v["recipes"].items()})
                        for m, v in r["models"].items()}
    assert stored(now) == stored(saved)
    assert now["models"]["wav2vec2_folded"]["recipes"]["int2_asym_g32"]["left_float"] == {}


def test_the_readme_example_runs_and_its_packed_model_equals_the_fake_quant_one(tmp_path,
                                                                              monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("**3. Your own model", 1)[1].split("```python\n", 1)[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    x, lengths = torch.randn(2, 40, 144), torch.tensor([40, 31])
    with torch.no_grad():
        assert torch.equal(scope["packed"](x, lengths)[0], scope["model"].eval()(x, lengths)[0])
    assert (tmp_path / "conformer.safetensors").is_file()

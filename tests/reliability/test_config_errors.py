"""Reliability matrix, bad configs: one error before any data or model is loaded, naming the
key, the value and what is allowed (docs/reliability.md, section "Configs")."""

import json
import subprocess
import warnings

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from rel_helpers import PYTHON, ROOT, child_env

from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import attach_fake_quant, recipe_from_config
from asrquant.runs import validate_config

GRAN = "['tensor', 'channel', 'group']"

# (overrides, the exact error text); every quant.* field, out of range and of the wrong type.
QUANT_CASES = [
    (["quant=int4", "quant.bits=9"], "QuantSpec.bits=9 is invalid; allowed: an int in 1..8"),
    (["quant=int4", "quant.bits=0"], "QuantSpec.bits=0 is invalid; allowed: an int in 1..8"),
    (["quant=int4", "quant.bits='4'"], "QuantSpec.bits='4' is invalid; allowed: an int in 1..8"),
    (["quant=int4", "quant.bits=4.0"], "QuantSpec.bits=4.0 is invalid; allowed: an int in 1..8"),
    (["quant=int4", "quant.bits=true"], "QuantSpec.bits=True is invalid; allowed: an int in 1..8"),
    (["quant=int4", "quant.bits=1"],
     "QuantSpec.bits=1 is invalid; allowed: 2..8 when symmetric=True (1-bit needs "
     "symmetric=False)"),
    (["quant=int4", "quant.symmetric=yes"],
     "QuantSpec.symmetric='yes' is invalid; allowed: true or false"),
    (["quant=int4", "quant.granularity=row"],
     f"QuantSpec.granularity='row' is invalid; allowed: {GRAN}"),
    (["quant=int4_asym_g128", "quant.group_size=0"],
     "QuantSpec.group_size=0 is invalid; allowed: an int >= 1"),
    (["quant=int4_asym_g128", "quant.group_size=-4"],
     "QuantSpec.group_size=-4 is invalid; allowed: an int >= 1"),
    (["quant=int4_asym_g128", "quant.group_size=big"],
     "QuantSpec.group_size='big' is invalid; allowed: an int >= 1"),
    (["quant=int4_asym_g128", "quant.group_size=null"],
     "QuantSpec.group_size=None is invalid; allowed: an int >= 1"),
    (["quant=int4", "quant.clip=max"],
     "QuantSpec.clip='max' is invalid; allowed: ['none', 'fixed', 'mse']"),
    # clip_ratio and clip_grid are not in the recipe files: they are added with '+'
    (["quant=int4", "+quant.clip_ratio=0"],
     "QuantSpec.clip_ratio=0 is invalid; allowed: a number > 0 and <= 1"),
    (["quant=int4", "+quant.clip_ratio=1.5"],
     "QuantSpec.clip_ratio=1.5 is invalid; allowed: a number > 0 and <= 1"),
    (["quant=int4", "+quant.clip_ratio=high"],
     "QuantSpec.clip_ratio='high' is invalid; allowed: a number > 0 and <= 1"),
    (["quant=int4", "+quant.clip_grid=[]"],
     "QuantSpec.clip_grid=() is invalid; allowed: a non-empty sequence of ratios in (0, 1]"),
    (["quant=int4", "+quant.clip_grid=[1.0,1.5]"],
     "QuantSpec.clip_grid[1]=1.5 is invalid; allowed: a number > 0 and <= 1"),
    (["quant=int4", "quant.scale_dtype=int8"],
     "QuantSpec.scale_dtype='int8' is invalid; allowed: ['float32', 'float16', 'bfloat16']"),
    (["quant=int4", "+quant.bitz=2"], "quant recipe got unknown key(s) ['bitz']; allowed: ["),
    (["quant=mixed_attn4_rest2", "quant.rules=[{pattern: x, bitz: 3}]"],
     "quant.rules[0] got unknown key(s) ['bitz']; allowed: ["),
    (["quant=mixed_attn4_rest2", "quant.rules=[{bits: 3}]"],
     "quant.rules[0]={'bits': 3} is invalid: needs 'pattern'"),
    (["quant=float", "quant.rules=[{pattern: x}]"],
     "quant.rules[0] ('x') needs 'bits' (the recipe's default is float) or 'float: true'"),
    (["quant=mixed_attn4_rest2", "quant.rules=[{pattern: 're:(', bits: 4}]"],
     "QuantRule.pattern='re:(' is not a valid regex"),
    (["quant=mixed_attn4_rest2", "quant.rules=[{pattern: x, bits: 12}]"],
     "QuantSpec.bits=12 is invalid; allowed: an int in 1..8"),
]

OTHER_CASES = [
    (["threads=0"], "threads=0 is invalid; allowed: null or an int >= 1"),
    (["threads='2'"], "threads='2' is invalid; allowed: null or an int >= 1"),
    (["data.policy=ignore"], "data.policy='ignore' is invalid; allowed: ['skip', 'error']"),
    (["data.eval_policy=warn"], "data.eval_policy='warn' is invalid; allowed: ['skip', 'error']"),
    (["data.max_batch_seconds=0"], "data.max_batch_seconds=0 is invalid; allowed: a number > 0"),
    (["data.kind=tfrecord"],
     "data.kind='tfrecord' is invalid; allowed: ['synthetic', 'manifest', 'librispeech']"),
    (["model.size=xl"], "model.size='xl' is invalid; allowed: ['cpu', 'l', 'm', 's']"),
    (["tokenizer.kind=bpe"],
     "tokenizer.kind='bpe' is invalid; allowed: ['sentencepiece', 'char']"),
    (["optim.lr=-1"], "optim.lr=-1 is invalid; allowed: a number > 0"),
    (["optim.lr=fast"], "optim.lr='fast' is invalid; allowed: a number > 0"),
    (["+optim.lrr=1"], "optim got unknown key(s) ['lrr']; allowed: ["),
    (["init_from=/nonexistent/best.ckpt"], "init_from='/nonexistent/best.ckpt' is not a file"),
    (["quant_strict=maybe"], "quant_strict='maybe' is invalid; allowed: true or false"),
    (["augment.prob=1.5"], "augment.prob=1.5 is invalid; allowed: a number >= 0 and <= 1"),
]


@pytest.mark.parametrize("overrides, message", QUANT_CASES + OTHER_CASES,
                         ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_bad_value_is_one_error_naming_key_value_and_allowed(cfg_of, overrides, message):
    with pytest.raises(ValueError) as e:
        validate_config(cfg_of("train", overrides), "train")
    assert message in str(e.value)


@pytest.mark.parametrize("overrides, message", QUANT_CASES[:4] + [
    (["ckpt=/nonexistent/x.ckpt"], "ckpt='/nonexistent/x.ckpt' is not a file"),
    ([], "ckpt is missing: pass ckpt=/path/to/checkpoint.ckpt (or "
         "packed=/path/to/model.safetensors, or onnx=/path/to/model.onnx)"),
    (["onnx_accuracy_level=5"], "onnx_accuracy_level=5 is invalid; allowed: null (as exported), "
                                "0, 1, 2, 3, 4"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_eval_config_is_checked_the_same_way(cfg_of, overrides, message, tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    extra = [f"ckpt={ckpt}"] if overrides and not overrides[0].startswith("ckpt") else []
    with pytest.raises(ValueError) as e:
        validate_config(cfg_of("eval", overrides + extra), "eval")
    assert message in str(e.value)


def test_ckpt_and_packed_together_is_refused(cfg_of, tmp_path):
    for name in ("x.ckpt", "m.safetensors", "m.onnx"):
        (tmp_path / name).write_bytes(b"")
    ckpt, packed, onnx = (f"ckpt={tmp_path / 'x.ckpt'}", f"packed={tmp_path / 'm.safetensors'}",
                          f"onnx={tmp_path / 'm.onnx'}")
    for given, word in (([ckpt, packed], "both"), ([packed, onnx], "both"),
                        ([ckpt, packed, onnx], "all")):
        with pytest.raises(ValueError, match=f"are {word} set; allowed: one of ckpt, packed, onnx"):
            validate_config(cfg_of("eval", given), "eval")


@pytest.mark.parametrize("overrides, group, option", [
    (["quant=int9"], "quant", "int2_asym_g32"),
    (["model=xl"], "model", "cpu"),
    (["trainer=tpu"], "trainer", "ddp"),
    (["data=tfrecord"], "data", "manifest"),
    (["experiment=qat_int9"], "experiment", "qat_int2"),
])
def test_unknown_recipe_or_group_option_lists_the_available_ones(cfg_of, overrides, group,
                                                               option):
    name = overrides[0].split("=")[1]
    with pytest.raises(MissingConfigException) as e:
        cfg_of("train", overrides)
    text = str(e.value)
    assert f"Could not find '{group}/{name}'" in text
    assert f"Available options in '{group}'" in text and option in text


@pytest.mark.parametrize("override, key", [
    ("quant.bitz=2", "bitz"), ("thread=2", "thread"), ("data.polcy=skip", "polcy"),
    ("model.num_layer=2", "num_layer"), ("trainer.max_epoch=3", "max_epoch"),
])
def test_misspelt_key_is_refused_naming_it(cfg_of, override, key):
    with pytest.raises(ConfigCompositionException) as e:
        cfg_of("train", [override])
    text = f"{e.value} {e.value.__cause__}"
    assert f"Could not override '{override.split('=')[0]}'" in text
    assert f"Key '{key}' is not in struct" in text


def tiny_module():
    tok = CharTokenizer()
    return ASRModule(size_config("cpu", tok.vocab_size, d_model=32, num_layers=1, ffn_dim=64,
                                 subsampling_channels=8), tok)


def test_rule_pattern_matching_no_parameter_warns_naming_it_or_fails_when_strict():
    recipe = recipe_from_config({"name": "typo", "bits": 2, "group_size": 32,
                                 "rules": [{"pattern": "*.self_atn.*", "bits": 4}]})
    with pytest.warns(UserWarning, match=r"rule pattern\(s\) \['\*\.self_atn\.\*'\] match no "
                                         "parameter"):
        attach_fake_quant(tiny_module(), recipe)
    with pytest.raises(ValueError, match=r"\['\*\.self_atn\.\*'\] match no parameter"):
        attach_fake_quant(tiny_module(), recipe, strict=True)
    good = recipe_from_config({"name": "ok", "bits": 2, "group_size": 32,
                               "rules": [{"pattern": "*.self_attn.*", "bits": 4}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach_fake_quant(tiny_module(), good, strict=True)


def test_a_rule_matching_nothing_fails_at_config_check_when_strict_before_any_data(cfg_of):
    bad = ["quant=mixed_attn4_rest2", "+quant.rules=[{pattern: '*.self_atn.*', bits: 4}]",
           "data.synthetic.n_train=-1"]  # data would fail later: the rule must fail first
    with pytest.raises(ValueError, match=r"\['\*\.self_atn\.\*'\] match no parameter"):
        validate_config(cfg_of("train", bad + ["quant_strict=true"]), "train")
    with pytest.warns(UserWarning, match=r"\['\*\.self_atn\.\*'\] match no parameter"):
        validate_config(cfg_of("train", bad), "train")


def test_quant_strict_config_reaches_the_quantization_callback():
    from asrquant.runs.blocks import quantization_callbacks

    cfg = {"quant_strict": True, "quant": {"name": "m", "bits": 2, "group_size": 32,
                                           "rules": [{"pattern": "*.nothing.*", "bits": 4}]}}
    (cb,) = quantization_callbacks(cfg, "ptq")
    assert cb.strict is True and cb.mode == "ptq"
    with pytest.raises(ValueError, match=r"\['\*\.nothing\.\*'\] match no parameter"):
        attach_fake_quant(tiny_module(), cb.recipe, strict=cb.strict)
    assert quantization_callbacks({"quant": {"name": "float", "bits": None}}, "qat") == []


def test_group_size_larger_than_a_row_is_one_group_per_row_as_documented():
    """Not an error: a group may not cross rows, so g >= row length is per-channel."""
    recipe_g = recipe_from_config({"bits": 4, "group_size": 100_000})
    recipe_ch = recipe_from_config({"bits": 4, "granularity": "channel", "group_size": None})
    a, b = attach_fake_quant(tiny_module(), recipe_g), attach_fake_quant(tiny_module(), recipe_ch)
    assert a.totals()["quantized_bytes"] == b.totals()["quantized_bytes"]
    torch.manual_seed(0)
    w = torch.randn(8, 48)
    from asrquant.quant import QuantSpec, fake_quantize

    assert torch.equal(fake_quantize(w, recipe_g.default),
                       fake_quantize(w, QuantSpec(bits=4, granularity="channel")))


def test_cli_fails_before_any_data_is_built_and_records_the_error(tmp_path):
    """The real entry point: the bad value stops the run before the corpus is synthesised."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    proc = subprocess.run(
        [PYTHON, "-m", "asrquant.cli.train", "quant=int4", "quant.bits=9",
         f"data.synthetic.cache_dir={cache}", f"hydra.run.dir={run}", "threads=1"],
        capture_output=True, text=True, timeout=300, env=child_env(), cwd=ROOT)
    assert proc.returncode != 0
    assert "QuantSpec.bits=9 is invalid; allowed: an int in 1..8" in proc.stderr
    assert not cache.exists()  # no data touched
    failed = json.loads((run / "results.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: QuantSpec.bits=9 is invalid; allowed: an int in 1..8"
    assert "quant.bits=9" in failed["overrides"]

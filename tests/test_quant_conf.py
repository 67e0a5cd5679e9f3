"""conf/quant/*.yaml: every recipe file builds a recipe that applies to a real Conformer.
Recipes are read as Hydra composes them (each starts from conf/quant/_base.yaml, which is
not a recipe: names starting with '_' are left out)."""

from pathlib import Path

import pytest
import torchaudio
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantSpec, attach_fake_quant, canonical_name, recipe_from_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "quant"
FILES = sorted(p for p in CONF.glob("*.yaml") if not p.name.startswith("_"))


def recipe_config(name: str) -> dict:
    """The `quant` node of conf/eval.yaml with quant=<name>, as the commands see it."""
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"quant={name}"])
    return OmegaConf.to_container(cfg.quant, resolve=True)


def test_the_papers_recipe_space_is_there():
    names = {f.stem for f in FILES}
    assert {"float", "int8", "int4", "int4_asym_g128", "int2_sym", "int2_asym", "int2_asym_g32",
            "int2_asym_g32_mse", "mixed_attn4_rest2"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_each_recipe_file_builds_and_attaches(path):
    cfg = recipe_config(path.stem)
    recipe = recipe_from_config(cfg)
    assert recipe.name == (path.stem if cfg.get("rules") else canonical_name(recipe.default))
    model = torchaudio.models.Conformer(input_dim=16, num_heads=2, ffn_dim=32, num_layers=1,
                                        depthwise_conv_kernel_size=7)
    if any("subsampling" in r["pattern"] for r in cfg.get("rules") or []):
        # a recipe that names our recognizer's front end (the *_matmul ones) attaches to it
        tok = CharTokenizer()
        model = ASRModule(size_config("cpu", tok.vocab_size, d_model=16, num_heads=2,
                                      ffn_dim=32, num_layers=1, subsampling_channels=4), tok)
    report = attach_fake_quant(model, recipe, strict=True)
    assert (report.num_quantized == 0) == (recipe.default is None)


def test_rules_inherit_the_default_and_can_keep_float():
    recipe = recipe_from_config({
        "name": "m", "bits": 2, "symmetric": False, "granularity": "group", "group_size": 32,
        "rules": [{"pattern": "a.*", "bits": 4}, {"pattern": "b.*", "float": True},
                  {"pattern": "c.*", "granularity": "channel"}],
    })
    assert recipe.rules[0].spec == QuantSpec(bits=4, symmetric=False, group_size=32)
    assert recipe.rules[1].spec is None
    assert recipe.rules[2].spec == QuantSpec(bits=2, symmetric=False, granularity="channel")


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"bitz": 2}, "unknown key(s) ['bitz']"),
        ({"bits": 9}, "QuantSpec.bits=9"),
        ({"bits": "2"}, "QuantSpec.bits='2'"),
        ({"bits": 2, "granularity": "group", "group_size": -4}, "QuantSpec.group_size=-4"),
        ({"bits": 2, "rules": [{"bits": 4}]}, "needs 'pattern'"),
        ({"bits": 2, "rules": [{"pattern": "x", "bitz": 4}]}, "unknown key(s) ['bitz']"),
        ({"bits": None, "rules": [{"pattern": "x"}]}, "needs 'bits'"),
    ],
)
def test_bad_recipe_configs_name_the_key_and_value(cfg, needle):
    with pytest.raises(ValueError) as e:
        recipe_from_config(cfg)
    assert needle in str(e.value)


def test_overridden_fields_rename_the_recipe():
    cfg = recipe_config("int8")
    assert recipe_from_config(cfg).name == "int8_sym_ch"
    assert recipe_from_config({**cfg, "bits": 3, "clip": "mse"}).name == "int3_sym_ch_mse"

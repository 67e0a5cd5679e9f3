"""conf/ mirrors the code: model sizes equal MODEL_SIZES; every experiment composes."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from asrquant.cli.common import CONF_DIR
from asrquant.lightning.pipeline import validate_config
from asrquant.models.sizes import MODEL_SIZES, size_config


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_model_yaml_equals_the_named_size_in_code(size):
    cfg = yaml.safe_load((Path(CONF_DIR) / "model" / f"{size}.yaml").read_text())
    assert cfg.pop("size") == size
    code = size_config(size, vocab_size=128).to_dict()
    code.pop("vocab_size")
    assert cfg == code


EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}", "data.dir=/d"]
                      if name.startswith("fsdd") else [f"experiment={name}"])
    validate_config(cfg, "train")

"""conf/ mirrors the code: model sizes equal MODEL_SIZES; every experiment composes."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from asrquant.cli.common import CONF_DIR
from asrquant.models.sizes import MODEL_SIZES, size_config
from asrquant.runs import validate_config


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
                      if name.startswith(("fsdd", "librispeech")) else [f"experiment={name}"])
    validate_config(cfg, "train")


def test_callbacks_group_builds_checkpointing_and_early_stopping(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from asrquant.runs.blocks import make_callbacks
    from asrquant.runs.common import plain

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = plain(compose(config_name="train", overrides=["callbacks=early_stop"]))
    cbs = make_callbacks(cfg, tmp_path)
    ck, last = [c for c in cbs if isinstance(c, ModelCheckpoint)]
    assert ck.monitor == "val/wer" and ck.filename == "best"
    assert last.monitor is None and last.filename == "last"  # rewritten every epoch
    es = next(c for c in cbs if isinstance(c, EarlyStopping))
    assert es.patience == 5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['swa'\]"):
        make_callbacks({"callbacks": {"swa": {}}}, tmp_path)

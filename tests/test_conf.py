"""conf/: what Hydra composes for each command. conf/ mirrors the code: model sizes equal
MODEL_SIZES, every experiment composes and validates, the callbacks group builds Lightning's
callbacks. The shared `hydra: default` names run folders by command, and no path ever goes
into a sweep member's folder name (paths are long and hold '/' and '='). trainer=gpu is
trainer=cpu with the GPU settings on top."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from asrquant.cli.common import CONF_DIR
from asrquant.models.sizes import MODEL_SIZES, size_config
from asrquant.runs import validate_config

CONF = Path(CONF_DIR)
COMMANDS = ["train", "eval", "search", "export"]
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# Keys that hold a file or folder, wherever they sit in a command's config.
PATH_LEAVES = {"ckpt", "packed", "init_from", "out", "cache_dir", "root", "dir", "train", "val",
               "test", "extra_test", "noise_manifest"}


def path_keys(node, prefix=""):
    """Dotted keys of `node` whose last part names a path (data.*, augment.* and top-level
    keys)."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key in PATH_LEAVES:
            yield dotted
        if isinstance(value, dict) and (prefix or key in ("data", "synthetic", "augment")):
            yield from path_keys(value, f"{dotted}.")


@pytest.mark.parametrize("command", COMMANDS)
def test_run_folders_are_named_by_the_command(cfg_of, command):
    cfg = cfg_of(command, hydra=True)
    assert cfg.task_name == command
    assert cfg.hydra.run.dir.startswith(f"outputs/{command}/")
    assert cfg.hydra.sweep.dir.startswith(f"multirun/{command}/")
    assert cfg.hydra.job.chdir is False


def sweep_subdir(cfg_of, command: str, overrides: list[str]) -> str:
    """The folder name a sweep member with these overrides gets (as member 0)."""
    cfg = cfg_of(command, overrides, hydra=True)
    cfg.hydra.job.num = 0
    return cfg.hydra.sweep.subdir


@pytest.mark.parametrize("command", COMMANDS)
def test_every_path_key_is_left_out_of_sweep_folder_names(cfg_of, command):
    datas = DATA if command in ("train", "eval", "search") else [None]
    for data in datas:
        chosen = [f"data={data}"] if data else []
        plain = OmegaConf.to_container(cfg_of(command, chosen, hydra=True), resolve=False)
        plain.pop("hydra")
        keys = sorted(path_keys(plain))
        assert keys, f"{command} data={data}: no path key found; path_keys() is broken"
        paths = [f"{k}=/data/long/path/{k}.x" for k in keys]
        name = sweep_subdir(cfg_of, command, chosen + paths + ["quant=int4"])
        assert name == "0_" + ",".join(sorted(chosen + ["quant=int4"])), (command, data, keys)


def test_a_sweep_member_folder_holds_the_recipe_and_settings_but_no_path(cfg_of):
    name = sweep_subdir(cfg_of, "eval", [
        "quant=int4", "ckpt=/very/long/path/to/best.ckpt", "threads=1",
        "+data.extra_test={held_out:/data/held_out/test.jsonl}",
        "+data.extra_test.other=/data/other/test.jsonl",  # a key under a path key
        "data.synthetic.cache_dir=/tmp/cache", "packed=model.safetensors"])
    assert name == "0_quant=int4,threads=1"


def test_the_gpu_trainer_is_the_cpu_trainer_with_gpu_settings(cfg_of):
    cpu = OmegaConf.to_container(cfg_of("train", ["trainer=cpu"]).trainer)
    gpu = OmegaConf.to_container(cfg_of("train", ["trainer=gpu"]).trainer)
    changed = {k for k in cpu.keys() | gpu.keys() if cpu.get(k) != gpu.get(k)}
    assert changed == {"accelerator", "max_epochs", "log_every_n_steps", "precision"}
    assert gpu["accelerator"] == "gpu" and gpu["precision"] == "bf16-mixed"


def test_each_quant_recipe_keeps_only_what_differs_from_base(cfg_of):
    base = OmegaConf.to_container(OmegaConf.load(CONF / "quant" / "_base.yaml"))
    for path in sorted((CONF / "quant").glob("[!_]*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        assert own.pop("defaults") == ["_base", "_self_"], path.name
        same = {k for k, v in own.items() if k in base and base[k] == v}
        assert not same, f"{path.name} repeats {sorted(same)} from _base"
        recipe = OmegaConf.to_container(cfg_of("eval", [f"quant={path.stem}"]).quant)
        assert set(recipe) >= set(base) and recipe["name"] == own["name"]


def test_base_is_not_a_recipe(cfg_of):
    quant = cfg_of("eval", ["quant=_base"]).quant
    assert OmegaConf.missing_keys(quant) == {"quant.name", "quant.bits"}  # left to each recipe
    with pytest.raises(MissingMandatoryValue, match=r"^Missing mandatory value: name\n"
                                                    r"\s+full_key: quant\.name"):
        OmegaConf.to_container(quant, throw_on_missing=True)


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_model_yaml_equals_the_named_size_in_code(cfg_of, size):
    cfg = OmegaConf.to_container(cfg_of("train", [f"model={size}"]).model)
    assert cfg.pop("size") == size
    code = size_config(size, vocab_size=128).to_dict()
    code.pop("vocab_size")
    assert cfg == code


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(cfg_of, name):
    needs_dir = name.startswith(("fsdd", "librispeech", "an4"))
    cfg = cfg_of("train", [f"experiment={name}"] + (["data.dir=/d"] if needs_dir else []))
    validate_config(cfg, "train")


def test_callbacks_group_builds_checkpointing_and_early_stopping(cfg_of, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from asrquant.runs.blocks import make_callbacks
    from asrquant.runs.common import plain

    cfg = plain(cfg_of("train", ["callbacks=early_stop"]))
    cbs = make_callbacks(cfg, tmp_path)
    ck, last = [c for c in cbs if isinstance(c, ModelCheckpoint)]
    assert ck.monitor == "val/wer" and ck.filename == "best"
    assert last.monitor is None and last.filename == "last"  # rewritten every epoch
    es = next(c for c in cbs if isinstance(c, EarlyStopping))
    assert es.patience == 5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['swa'\]"):
        make_callbacks({"callbacks": {"swa": {}}}, tmp_path)

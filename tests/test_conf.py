"""conf/: what Hydra composes for each command. The shared `hydra: default` names run folders
by command, and no path ever goes into a sweep member's folder name (paths are long and
hold '/' and '='). trainer=gpu is trainer=cpu with the GPU settings on top."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
COMMANDS = ["train", "eval", "search", "export"]
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# Keys that hold a file or folder, wherever they sit in a command's config.
PATH_LEAVES = {"ckpt", "packed", "init_from", "out", "cache_dir", "root", "dir", "train", "val",
               "test", "extra_test"}


def composed(command: str, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=command, overrides=list(overrides), return_hydra_config=True)


def path_keys(node, prefix=""):
    """Dotted keys of `node` whose last part names a path (data.* and top-level keys)."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key in PATH_LEAVES:
            yield dotted
        if isinstance(value, dict) and (prefix or key == "data" or key == "synthetic"):
            yield from path_keys(value, f"{dotted}.")


@pytest.mark.parametrize("command", COMMANDS)
def test_run_folders_are_named_by_the_command(command):
    cfg = composed(command)
    assert cfg.task_name == command
    assert cfg.hydra.run.dir.startswith(f"outputs/{command}/")
    assert cfg.hydra.sweep.dir.startswith(f"multirun/{command}/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("command", COMMANDS)
def test_every_path_key_is_left_out_of_sweep_folder_names(command):
    excluded = set(composed(command).hydra.job.config.override_dirname.exclude_keys)
    datas = DATA if command in ("train", "eval", "search") else [None]
    for data in datas:
        cfg = composed(command, [f"data={data}"] if data else [])
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra")
        missing = set(path_keys(plain)) - excluded
        assert not missing, f"{command} data={data}: path keys {sorted(missing)} would name folders"


def test_a_sweep_member_folder_holds_the_recipe_and_settings_but_no_path():
    cfg = composed("eval", ["quant=int4", "ckpt=/very/long/path/to/best.ckpt", "threads=1",
                            "+data.extra_test={held_out:/data/held_out/test.jsonl}",
                            "data.synthetic.cache_dir=/tmp/cache"])
    name = cfg.hydra.job.override_dirname
    assert name == "quant=int4,threads=1"


def test_the_gpu_trainer_is_the_cpu_trainer_with_gpu_settings():
    cpu = OmegaConf.to_container(composed("train", ["trainer=cpu"]).trainer)
    gpu = OmegaConf.to_container(composed("train", ["trainer=gpu"]).trainer)
    changed = {k for k in cpu.keys() | gpu.keys() if cpu.get(k) != gpu.get(k)}
    assert changed == {"accelerator", "max_epochs", "log_every_n_steps", "precision"}
    assert gpu["accelerator"] == "gpu" and gpu["precision"] == "bf16-mixed"


def test_each_quant_recipe_keeps_only_what_differs_from_base():
    base = OmegaConf.to_container(OmegaConf.load(CONF / "quant" / "_base.yaml"))
    for path in sorted((CONF / "quant").glob("[!_]*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        assert own.pop("defaults") == ["_base", "_self_"], path.name
        same = {k for k, v in own.items() if k in base and base[k] == v}
        assert not same, f"{path.name} repeats {sorted(same)} from _base"
        recipe = OmegaConf.to_container(composed("eval", [f"quant={path.stem}"]).quant)
        assert set(recipe) >= set(base) and recipe["name"] == own["name"]


def test_base_is_not_a_recipe():
    with pytest.raises(Exception, match="name|bits|Missing"):
        OmegaConf.to_container(composed("eval", ["quant=_base"]).quant, throw_on_missing=True)

"""The built wheel works on its own: configs and shipped models inside, the commands run from an
empty folder with no source checkout on the path (issue 13, docs/install.md).

The wheel is installed without -e into a fresh virtual environment that borrows this
environment's installed dependencies (torch, lightning, ...) through a .pth line; that line
does not run this environment's .pth files, so its editable asrquant stays invisible."""

import importlib
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PURELIB = sysconfig.get_paths()["purelib"]  # where this environment's dependencies live


def test_pyproject_lists_every_package_and_conf_group():
    """The wheel's package list is explicit (conf/ and models/ are mapped in): a new room
    or conf group missing from it would silently be left out of the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    rooms = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "asrquant").rglob("__init__.py")}
    groups = {f"asrquant.conf.{d.name}" for d in (ROOT / "conf").iterdir() if d.is_dir()}
    assert listed == rooms | groups | {"asrquant.conf", "asrquant.checkpoints"}


def test_import_asrquant_is_light_and_its_public_names_are_the_real_ones():
    bare = subprocess.run([sys.executable, "-c", "import sys, asrquant; "
                           "print('torch' in sys.modules, asrquant.pretrained_names())"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bare.stdout.startswith("False ['cpu_an4_float', 'cpu_fsdd_float', "), bare.stderr
    import asrquant

    for name, module in asrquant._MODULE_OF.items():
        assert getattr(asrquant, name) is getattr(importlib.import_module(module), name)
        assert name in asrquant.__all__
    with pytest.raises(AttributeError, match="no attribute 'quantise_'"):
        asrquant.quantise_  # noqa: B018


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(wheel path, bin folder of a fresh venv with the wheel installed, not editable)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy: an in-tree build leaves build/lib behind, whose stale files a later
    # wheel would carry
    src = tmp / "src"
    top = {".git", ".venv", "runs", "build", "dist", "outputs", "multirun", ".hypothesis",
           ".pytest_cache", ".ruff_cache", ".import_linter_cache", "asrquant.egg-info"}
    shutil.copytree(ROOT, src, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == ROOT and n in top)])
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("asrquant-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    Path(site.stdout.strip(), "_asrquant_test_deps.pth").write_text(PURELIB + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True,
                   text=True, timeout=300)
    return wheel, venv / "bin"


def test_the_wheel_carries_every_config_and_shipped_model(wheel_env):
    wheel, _ = wheel_env
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"asrquant/conf/{p.relative_to(ROOT / 'conf')}" for p in
               (ROOT / "conf").rglob("*.yaml")}
    models = {f"asrquant/checkpoints/{p.name}" for p in (ROOT / "models").glob("*.safetensors")}
    assert configs and models
    assert configs <= names and models <= names
    assert "asrquant/checkpoints/README.md" in names


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd),
           "ASRQUANT_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "2"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


TINY_SYNTHETIC = ["data.synthetic.n_train=4", "data.synthetic.n_dev=2",
                  "data.synthetic.n_test=6", "data.synthetic.n_test_voices=2"]


def test_eval_export_and_transcribe_from_an_empty_folder(wheel_env, tmp_path):
    """PTQ int2 of the shipped model on a tiny synthetic test set, its packed export, a
    user's own recipe found with --config-dir, and load_quantized + transcribe: the packed
    model transcribes the test audio exactly as the eval's fake-quantized model did."""
    _, bin_dir = wheel_env
    ev = run(bin_dir, tmp_path, "asrquant-eval", "ckpt=pretrained:cpu_synthetic_float",
             "quant=int2_asym_g32", "export=true", "hydra.run.dir=ptq", *TINY_SYNTHETIC)
    assert ev.returncode == 0, ev.stderr[-3000:]
    results = json.loads((tmp_path / "ptq" / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["config"]["quant"]["bits"] == 2
    packed = tmp_path / "ptq" / "model.safetensors"
    assert packed.is_file()

    mine = tmp_path / "myconf" / "quant" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("defaults:\n  - _base\n  - _self_\nname: mine\nbits: 3\ngroup_size: 64\n")
    without = run(bin_dir, tmp_path, "asrquant-export", "ckpt=pretrained:cpu_synthetic_float",
                  "quant=mine", "out=mine.safetensors", "hydra.run.dir=exp")
    assert without.returncode != 0 and "mine" in without.stderr
    ex = run(bin_dir, tmp_path, "asrquant-export", "--config-dir", "myconf",
             "ckpt=pretrained:cpu_synthetic_float", "quant=mine", "out=mine.safetensors",
             "hydra.run.dir=exp")
    assert ex.returncode == 0, ex.stderr[-3000:]
    spec = json.loads(run(bin_dir, tmp_path, "python", "-c",
                          "import json; from safetensors import safe_open; "
                          "f = safe_open('mine.safetensors', 'pt'); "
                          "print(f.metadata()['recipe'])").stdout)
    assert (spec["default"]["bits"], spec["default"]["group_size"]) == (3, 64)

    preds = (tmp_path / "ptq" / "predictions" / "test_test_epoch0.tsv").read_text().split("\n")
    expected = dict(line.split("\t")[::2] for line in preds[1:] if line)
    wavs = sorted((tmp_path / "cache").rglob("test/test-*.wav"))
    assert len(wavs) == len(expected) == 6
    script = ("import sys, json, asrquant\n"
              "from asrquant.data.audio import read_audio\n"
              "m = asrquant.load_quantized(sys.argv[1])\n"
              "where = [asrquant.__file__, asrquant.config_dir(),\n"
              "         asrquant.pretrained('cpu_synthetic_float')]\n"
              "print(json.dumps([list(map(str, where)),\n"
              "                  m.transcribe([read_audio(p) for p in sys.argv[2:]])]))\n")
    tr = run(bin_dir, tmp_path, "python", "-c", script, str(packed), *map(str, wavs))
    assert tr.returncode == 0, tr.stderr[-3000:]
    where, texts = json.loads(tr.stdout)
    assert all(p.startswith(str(bin_dir.parent)) for p in where), where  # no checkout used
    assert texts == [expected[w.stem] for w in wavs]

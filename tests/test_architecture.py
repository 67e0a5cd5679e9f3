"""The house (docs/architecture.md): the rooms' one-way arrows hold, and the contracts that
check them fail when an arrow is drawn the wrong way."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml")],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout or "broken" not in out.stdout


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "asrquant", tmp_path / "asrquant",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_an_arrow_the_wrong_way_breaks_a_contract(tmp_path):
    """quant importing runs (even inside a function, as one would to dodge a circle) and
    export importing the callback are both refused, naming the import."""
    root = copy_of_the_package(tmp_path)
    spec = root / "asrquant" / "quant" / "spec.py"
    spec.write_text(spec.read_text() + "\n\ndef _late():\n    import asrquant.runs  # noqa\n")
    packed = root / "asrquant" / "export" / "packed.py"
    packed.write_text(packed.read_text()
                      + "\nfrom asrquant.lightning.callbacks import QuantizationCallback\n")
    out = lint_imports(root)
    assert out.returncode != 0
    assert "asrquant.quant.spec -> asrquant.runs" in out.stdout
    assert "asrquant.export.packed -> asrquant.lightning.callbacks" in out.stdout


def test_a_new_room_must_be_given_its_place(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "asrquant" / "serve.py").write_text("import asrquant.runs\n")
    out = lint_imports(root)
    assert out.returncode != 0 and "asrquant.serve" in out.stdout


# Imports of asrquant modules inside functions: each one says why it is not a dodged circle.
# (asrquant/__init__.py and asrquant/runs/__init__.py name their lazily imported modules in a
# table, through importlib: `import asrquant` stays free of torch and Lightning.)
LAZY_IMPORTS_ALLOWED: set = set()


def test_no_package_import_hides_inside_a_function():
    found = set()
    for path in sorted((ROOT / "asrquant").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import)
                         else [])
                found |= {(rel, n) for n in names if n.startswith("asrquant")}
    assert found == LAZY_IMPORTS_ALLOWED

"""Offline security audit of the package: data is never code.

(a) bandit over ``esdc/`` with ``tests/reliability/bandit.yaml`` (its skips are
    justified there): zero findings.
(b) An AST scan of ``esdc/``: YAML only through safe loaders; no pickle-family module
    (pickle, dill, cloudpickle, marshal, shelve), no ``joblib.load``/``dump`` (joblib
    is used only as scikit-learn's parallel backend), no ``allow_pickle=True`` or
    ``read_pickle``; no ``eval``/``exec``/``compile``/``__import__``; no
    ``os.system``/``os.popen`` and no ``shell=True``; every ``torch.load`` passes
    ``weights_only=True``; ``skops.io.load`` only with an explicit list of trusted
    types; Keras ``load_model`` never with ``safe_mode=False``; no pickle-based MLflow
    loaders; ``faiss.read_index`` only in ``esdc.search.index.load_index``, after the
    file's SHA-256 is compared with its manifest and followed by a type check. Each
    rule is shown to catch a violation (so the scan cannot pass vacuously).
(c) ``pip check``: the installed set has no broken requirement.
(d) The core pins of ``pyproject.toml`` are exact, torch is pinned exactly wherever it
    appears, and every exact pin is what is installed.

No network: pip-audit (vulnerability database online) is not run here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "esdc"
BANDIT_CONFIG = ROOT / "tests" / "reliability" / "bandit.yaml"


# --------------------------------------------------------------------------- (a) bandit
def test_bandit_finds_nothing() -> None:
    pytest.importorskip("bandit")
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", str(BANDIT_CONFIG), "-r", str(PACKAGE),
         "-f", "json", "-q"],
        capture_output=True, text=True, check=False, timeout=300)
    report = json.loads(proc.stdout)
    assert report["errors"] == [], report["errors"]
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_severity']}: "
                f"{r['issue_text']}" for r in report["results"]]
    assert findings == [], "\n".join(findings)
    scanned = report["metrics"]["_totals"]["loc"]
    assert scanned > 5000, scanned  # the package was scanned, not an empty folder


# --------------------------------------------------------------------------- (b) AST scan
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
#: Modules used for other things (joblib: scikit-learn's parallel backend) whose
#: file loaders unpickle.
PICKLE_LOADERS = {"joblib.load", "joblib.dump"}
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load",
               "unsafe_load_all"}
PICKLE_MLFLOW_FLAVOURS = {"sklearn", "pytorch", "pyfunc_pickle"}


@dataclass(frozen=True)
class Finding:
    where: str
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.where} [{self.rule}] {self.text}"


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain ("" for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(text: str, where: str) -> list[Finding]:
    """Every rule violation in one module's source."""
    tree = ast.parse(text)
    out: list[Finding] = []

    def bad(node: ast.AST, rule: str, msg: str) -> None:
        out.append(Finding(f"{where}:{getattr(node, 'lineno', 0)}", rule, msg))

    # imports: pickle family; names bound to skops.io's loaders
    skops_loads: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLE_MODULES:
                    bad(node, "pickle", f"import {a.name}")
                if a.name == "skops.io":
                    skops_loads |= {f"{a.asname or a.name}.load", f"{a.asname or a.name}.loads"}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] in PICKLE_MODULES:
                bad(node, "pickle", f"from {mod} import ...")
            for a in node.names:
                if f"{mod}.{a.name}" in PICKLE_LOADERS:
                    bad(node, "pickle", f"from {mod} import {a.name}")
            if mod == "skops.io":
                skops_loads |= {a.asname or a.name for a in node.names
                                if a.name in ("load", "loads")}
            if mod == "skops":
                skops_loads |= {f"{a.asname or a.name}.load" for a in node.names
                                if a.name == "io"}
            if mod == "yaml":
                for a in node.names:
                    if a.name in UNSAFE_YAML or a.name in ("Loader", "UnsafeLoader",
                                                           "FullLoader"):
                        bad(node, "yaml", f"from yaml import {a.name}")
    skops_loads |= {"skops.io.load", "skops.io.loads"}

    # faiss.read_index: only in load_index, after the SHA-256 check, with a type check
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)]
        reads = [c for c in calls if _dotted(c.func).endswith("read_index")]
        if not reads:
            continue
        sha_lines = [c.lineno for c in calls
                     if _dotted(c.func) in ("_sha", "sha256sum", "file_sha256")]
        typed = [c for c in calls if _dotted(c.func) == "isinstance" and len(c.args) == 2
                 and _dotted(c.args[1]).endswith("IndexIDMap2")]
        for r in reads:
            if fn.name != "load_index" or not where.endswith("search/index.py"):
                bad(r, "faiss", f"read_index in {fn.name} (only load_index may load one)")
            if not sha_lines or min(sha_lines) > r.lineno:
                bad(r, "faiss", "read_index without a SHA-256 comparison before it")
            if not typed or max(c.lineno for c in typed) < r.lineno:
                bad(r, "faiss", "read_index without an isinstance(..., IndexIDMap2) after it")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node) in (
                "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader",
                "yaml.CUnsafeLoader", "yaml.CFullLoader"):
            bad(node, "yaml", f"{_dotted(node)} constructs arbitrary objects")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in CODE_BUILTINS:
            bad(node, "eval", f"{node.func.id}() runs text as code")
        if name in ("os.system", "os.popen", "os.execv", "os.execvp", "os.spawnl"):
            bad(node, "shell", f"{name}()")
        if _is_const(_kw(node, "shell"), True):
            bad(node, "shell", f"{name}(..., shell=True)")
        if name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                bad(node, "yaml", f"{name}() without a safe Loader (use yaml.safe_load)")
        if name in PICKLE_LOADERS or name.split(".")[-1] in ("read_pickle", "to_pickle") or (
                name.split(".")[-1] == "load" and _is_const(_kw(node, "allow_pickle"), True)):
            bad(node, "pickle", f"{name}() unpickles")
        if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            bad(node, "torch", "torch.load without weights_only=True")
        if name in skops_loads:
            trusted = _kw(node, "trusted")
            if trusted is None or _is_const(trusted, True) or (
                    isinstance(trusted, ast.Constant) and trusted.value is not None
                    and not isinstance(trusted.value, tuple)):
                bad(node, "skops", f"{name} without an explicit list of trusted types")
        if name.split(".")[-1] == "load_model" and _is_const(_kw(node, "safe_mode"), False):
            bad(node, "keras", "load_model(safe_mode=False) runs code from the file")
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "mlflow" and parts[1] in PICKLE_MLFLOW_FLAVOURS \
                and parts[-1] == "load_model":
            bad(node, "mlflow", f"{name} unpickles the model")
    return out


def test_package_has_no_code_loading_from_data() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    findings = [f for p in files
                for f in scan_source(p.read_text(encoding="utf-8"),
                                     str(p.relative_to(ROOT)))]
    assert findings == [], "\n".join(map(str, findings))


def test_the_loaders_in_use_are_the_safe_ones() -> None:
    """The package does load YAML, weights and indexes, and does so the safe way."""
    text = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    joined = "\n".join(text.values())
    assert "yaml.safe_load(" in joined
    assert "torch.load(" in joined and "weights_only=True" in joined
    assert "faiss.read_index(" in (PACKAGE / "search" / "index.py").read_text()


@pytest.mark.parametrize(("source", "rule"), [
    ("import yaml\nyaml.load(open('r.yaml'))\n", "yaml"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)\n", "yaml"),
    ("import yaml\nyaml.unsafe_load(text)\n", "yaml"),
    ("from yaml import full_load\n", "yaml"),
    ("import pickle\n", "pickle"),
    ("from joblib import load\n", "pickle"),
    ("import joblib\njoblib.load('model.joblib')\n", "pickle"),
    ("import numpy as np\nnp.load('a.npy', allow_pickle=True)\n", "pickle"),
    ("import pandas as pd\npd.read_pickle('a.pkl')\n", "pickle"),
    ("eval('1 + 1')\n", "eval"),
    ("exec(code)\n", "eval"),
    ("__import__('os')\n", "eval"),
    ("import os\nos.system('id')\n", "shell"),
    ("import subprocess\nsubprocess.run('id', shell=True)\n", "shell"),
    ("import torch\ntorch.load('w.pt')\n", "torch"),
    ("import torch\ntorch.load('w.pt', weights_only=False)\n", "torch"),
    ("import skops.io as sio\nsio.load('m.skops', trusted=True)\n", "skops"),
    ("from skops.io import load\nload('m.skops')\n", "skops"),
    ("import keras\nkeras.saving.load_model('m.keras', safe_mode=False)\n", "keras"),
    ("import mlflow\nmlflow.sklearn.load_model('runs:/x/model')\n", "mlflow"),
    ("import faiss\ndef load_index(p):\n    return faiss.read_index(p)\n", "faiss"),
    ("import faiss\ndef other(p):\n    _sha(p)\n    i = faiss.read_index(p)\n"
     "    isinstance(i, faiss.IndexIDMap2)\n", "faiss"),
])
def test_scan_catches_each_rule(source: str, rule: str) -> None:
    findings = scan_source(source, "esdc/search/index.py" if "load_index" in source
                           else "esdc/example.py")
    assert rule in {f.rule for f in findings}, findings


@pytest.mark.parametrize("source", [
    "import yaml\nyaml.safe_load(text)\n",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)\n",
    "import torch\ntorch.load('w.pt', weights_only=True)\n",
    "model.eval()\n",
    "import joblib\nwith joblib.parallel_config(backend='dask'):\n    pass\n",
    "import skops.io as sio\nsio.load('m.skops', trusted=['sklearn.tree.DecisionTree'])\n",
    "import keras\nkeras.saving.load_model('m.keras')\n",
    "import faiss\ndef load_index(p):\n    _sha(p)\n    i = faiss.read_index(p)\n"
    "    isinstance(i, faiss.IndexIDMap2)\n",
])
def test_scan_accepts_safe_code(source: str) -> None:
    assert scan_source(source, "esdc/search/index.py") == []


# --------------------------------------------------------------------------- (c) pip check
def test_pip_check_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- (d) pins
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CORE_EXACT = {"numpy", "pandas", "xarray", "zarr", "numcodecs", "dask", "distributed", "bokeh",
              "pyresample", "rioxarray", "h5netcdf", "netcdf4"}


#: Extras installed together by ``make test`` (and ``make demo``); others (e.g. xcube,
#: which pins an older pandas) live in their own environments.
TOGETHER = ("test", "tensorflow", "ml", "search", "plot", "solar")


def _requirements(extras: tuple[str, ...] | None = None) -> list[tuple[str, Requirement]]:
    project = PYPROJECT["project"]
    reqs = [("core", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        if extras is None or extra in extras:
            reqs += [(extra, Requirement(r)) for r in items]
    return reqs


def _exact(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def test_core_pins_are_exact() -> None:
    core = {r.name.lower(): r for where, r in _requirements() if where == "core"}
    loose = sorted(n for n in CORE_EXACT if _exact(core[n]) is None)
    assert loose == [], f"core dependencies not pinned with ==: {loose}"


def test_torch_is_pinned_exactly_everywhere() -> None:
    torch = [(where, str(r)) for where, r in _requirements() if r.name.lower() == "torch"]
    assert torch, "torch appears in the extras"
    assert all(_exact(Requirement(r)) for _, r in torch), torch  # a loose torch pulls CUDA


def test_installed_versions_match_the_exact_pins() -> None:
    wrong = []
    for where, req in _requirements(TOGETHER):
        pin = _exact(req)
        if pin is None:
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra that is not installed here (e.g. tensorflow)
        if not req.specifier.contains(have, prereleases=True):  # 2.13.0+cpu is 2.13.0
            wrong.append(f"{req.name} ({where}): pinned {pin}, installed {have}")
    assert wrong == [], "\n".join(wrong)

"""The lean install and the package's import graph: what `pip install promptmii` pulls, what an import loads."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from promptmii import models
from promptmii.errors import MissingExtraError, require

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SRC = REPO / "src" / "promptmii"


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[=<>!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def parts(model: models.BundledModel) -> set[str]:
    return {f"{model.module_prefix}{i}".replace("_", "-") for i in range(1, model.parts + 1)}


def test_core_install_is_llama_cpp_and_the_default_model_only() -> None:
    core = names(PROJECT["dependencies"])
    assert core - parts(models.BUNDLED[models.DEFAULT_MODEL]) == {"llama-cpp-python", "click", "tqdm", "numpy", "httpx"}
    assert not core & {"datasets", "matplotlib", "scipy", "gepa", "torch", "transformers"}


def test_each_bundled_model_is_installed_by_the_extra_it_names() -> None:
    extras = PROJECT["optional-dependencies"]
    for model in models.BUNDLED.values():
        installed_by = names(extras[model.extra]) if model.extra else names(PROJECT["dependencies"])
        assert parts(model) <= installed_by, model.name


def test_dev_pulls_every_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    [dev_self] = [r for r in extras["dev"] if r.startswith("promptmii[")]
    assert set(dev_self[len("promptmii[") : -1].split(",")) == set(extras) - {"dev"}


def test_require_names_the_extra() -> None:
    with pytest.raises(
        MissingExtraError,
        match=re.escape("x needs no_such_module, which is not installed: pip install 'promptmii[hub]'"),
    ):
        require("no_such_module.sub", "hub", "x")


def test_evaluate_is_the_module_and_run_eval_the_function() -> None:
    import promptmii
    import promptmii.evaluate
    from promptmii.experiment import run_eval

    assert inspect.ismodule(promptmii.evaluate) and promptmii.run_eval is run_eval
    assert "evaluate" not in promptmii.__all__ and "run_eval" in promptmii.__all__


def package_imports(path) -> list[str]:
    """`import promptmii` / `from promptmii import name` where name is not a submodule: the cycle's shape."""
    submodules = {p.stem for p in SRC.glob("*.py")} | {"backends"}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(alias.name == "promptmii" for alias in node.names):
            found.append("import promptmii")
        if isinstance(node, ast.ImportFrom) and node.module == "promptmii":
            found += [f"from promptmii import {a.name}" for a in node.names if a.name not in submodules]
    return found


def test_no_module_imports_the_package_it_is_part_of() -> None:
    offenders = {p.name: package_imports(p) for p in SRC.rglob("*.py") if p.name != "__init__.py"}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_cli_loads_without_gepa_datasets_or_matplotlib() -> None:
    code = "import sys, promptmii.cli; print(sorted({'gepa', 'datasets', 'matplotlib', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"

"""The package as pip sees it: pyproject.toml builds an sdist that builds a wheel that runs, and every
third-party module the code imports is declared.

The builds call setuptools' PEP 517 hooks in a subprocess with the installed setuptools (what
``python -m build --no-isolation`` does), from a copy of the source tree, so nothing is downloaded and
nothing is written into the checkout. The wheel is built from the unpacked sdist: a file that installing
needs and the sdist lacks fails here, as it would for a user.
"""

import ast
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself needs no TOML reader

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minichatgpt"
STATIC_PAGE = "minichatgpt/serving/static/chat.html"
# Modules that belong to an extra and may import its packages at their top (nothing imports them at the top).
# The HTTP server's modules import FastAPI/pydantic at their top: only `serve` installs them (and `minichatgpt serve`
# checks for them before importing these).
EXTRA_MODULES = {f"minichatgpt/serving/{name}.py": "serve" for name in ("server", "guard", "protocol", "replies",
                                                                         "worker")}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "outputs", "runs", "*.pt")
TIMEOUT_S = 300


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dist_name(requirement: str) -> str:
    """``"Jinja2>=3.1"`` -> ``"jinja2"`` (PEP 503 normalized)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def build(hook: str, source: Path, out: Path) -> Path:
    """Run setuptools' ``build_sdist`` / ``build_wheel`` hook in ``source``; returns the file it wrote."""
    code = f"import sys, setuptools.build_meta as backend; print(backend.{hook}(sys.argv[1]))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist path, wheel path): the sdist from a copy of the tree, the wheel from the unpacked sdist."""
    from packaging.version import Version

    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    floor = re.search(r"setuptools>=([\d.]+)", " ".join(backend)).group(1)
    if Version(importlib.metadata.version("setuptools")) < Version(floor):
        pytest.skip(f"setuptools>={floor} (the build backend) is not installed; nothing is downloaded here")
    tmp = tmp_path_factory.mktemp("packaging")
    shutil.copytree(ROOT, tmp / "src", ignore=COPY_IGNORE)
    sdist = build("build_sdist", tmp / "src", tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    wheel = build("build_wheel", tmp / "unpacked" / sdist.name[:-len(".tar.gz")], tmp / "dist")
    return sdist, wheel


def test_no_setup_py_or_requirements_file_is_needed():
    assert not (ROOT / "setup.py").exists() and not (ROOT / "requirements.txt").exists()
    meta = project()
    assert meta["scripts"] == {"minichatgpt": "minichatgpt.cli:main"}
    assert {"dev", "serve", "bench", "deepspeed", "colossalai", "cuda", "gguf", "tensorboard", "quant"} \
        <= set(meta["optional-dependencies"])


def test_sdist_holds_what_building_needs(built):
    sdist, _ = built
    prefix = sdist.name[:-len(".tar.gz")] + "/"
    with tarfile.open(sdist) as tar:
        names = {name[len(prefix):] for name in tar.getnames() if name.startswith(prefix)}
    assert {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO", STATIC_PAGE} <= names
    sources = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sources <= names, sorted(sources - names)


def test_wheel_holds_the_page_the_script_and_the_requirements(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert STATIC_PAGE in names
    assert {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")} <= names
    assert re.search(r"^minichatgpt = minichatgpt\.cli:main$", entry_points, re.M)
    required = {dist_name(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert required == {dist_name(r) for r in project()["dependencies"]}
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert extras == set(project()["optional-dependencies"])


def test_wheel_runs_from_its_own_files(built, tmp_path):
    """Unpacked alone (no checkout on the path), the wheel's command answers --help and finds its web page."""
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(tmp_path / "site")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import sys, minichatgpt, importlib.resources as r; from minichatgpt.cli import main\n"
            "print(minichatgpt.__file__)\n"
            "assert '<html' in r.files('minichatgpt.serving').joinpath('static/chat.html').read_text().lower()\n"
            "sys.exit(main(['--help']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(str(tmp_path / "site")) and "commands:" in done.stdout


# ---------------------------------------------------------------------------------------------
# imports against declared requirements
# ---------------------------------------------------------------------------------------------
def third_party_imports(path: Path):
    """(top-level module, line, at module level) for each absolute non-stdlib import of ``path``; imports
    inside a function body are lazy (not at module level)."""
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], child.lineno, not lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.module.split(".")[0], child.lineno, not lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return [(name, line, top) for name, line, top in found
            if name not in sys.stdlib_module_names and name != "minichatgpt"]


@functools.lru_cache(maxsize=None)
def installed_distributions() -> dict:
    return importlib.metadata.packages_distributions()  # a scan of every installed package: once


def distributions_of(module: str) -> set:
    """Distribution names that may provide ``module``: its own name, and what installed metadata says."""
    known = installed_distributions().get(module, [])
    return {dist_name(module)} | {dist_name(d) for d in known}


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is Python 3.10+")
def test_every_imported_package_is_declared():
    meta = project()
    core = {dist_name(r) for r in meta["dependencies"]}
    extras = {name: {dist_name(r) for r in reqs} for name, reqs in meta["optional-dependencies"].items()}
    # `dev` holds the test tools: a package the library imports must be in the core or a feature's extra.
    optional = set().union(*(reqs for name, reqs in extras.items() if name != "dev"))
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module, line, top in third_party_imports(path):
            if distributions_of(module) & core:
                continue
            # At a module's top only the core, or that module's own extra; inside a function any extra.
            if rel in EXTRA_MODULES:
                allowed, where = extras[EXTRA_MODULES[rel]], f"in the {EXTRA_MODULES[rel]} extra"
            else:
                allowed, where = (set(), "as a core dependency") if top else (optional, "in a feature's extra")
            if not distributions_of(module) & allowed:
                problems.append(f"{rel}:{line} imports {module} " + ("at module level" if top else "lazily")
                                + f" and it is not declared {where}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # imports the whole package in a fresh interpreter: 4 s idle, 45 s on busy shared cores
@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is Python 3.10+")
def test_every_module_imports_with_the_core_dependencies_alone():
    """Every optional package the code names is blocked; each module but the extras' own still imports."""
    core = {dist_name(r) for r in project()["dependencies"]}
    blocked = sorted({module for path in PACKAGE.rglob("*.py") for module, _, _ in third_party_imports(path)
                      if not distributions_of(module) & core})
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in PACKAGE.rglob("*.py") if str(p.relative_to(ROOT)) not in EXTRA_MODULES)
    code = (f"import importlib, sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert blocked  # the walk found the optional packages (fastapi, deepspeed...)

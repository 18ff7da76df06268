"""The wheel built from the tree, installed into a fresh virtual environment, works.

The wheel is built offline from a copy of the tracked files (so it needs nothing
untracked, and no build output lands in the working tree), installed with pip into
a new environment, and run there: in a subprocess and in a real Jupyter kernel,
never from the working tree. The new environment borrows this test environment's
heavy packages (torch, transformers, ipykernel...) through a ``.pth`` file that
adds their folder to ``sys.path`` as a plain path: Python processes ``.pth`` files
only in site folders, so the editable install's hook in that folder (a ``.pth``
that puts the working tree on ``sys.path``) is not honoured. The tests check that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _kernels import collect, reply_to

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (pyproject.toml's lowest): the same parser from PyPI
    import tomli as tomllib

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
#: Only these sit beside the package in the wheel: its metadata and the license.
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "licenses/LICENSE"}
NEVER = ("tests/", "benchmarks/", "tools/", "notebooks/", "docs/", "build/", "dist/")


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python or pip elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
           and not k.startswith("PIP_")}
    # pip offline, with no user configuration and no cache in the home directory.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    env.update(extra)
    return env


def _run(args: list[str | Path], cwd: Path, **extra: str) -> str:
    """Run a command; fail the test with its output when it fails."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**extra),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _tracked_files() -> list[str]:
    """The files git tracks in the working tree (as they are on disk now)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail(f"tests/test_wheel.py builds from the files git tracks: {ROOT} needs to be a "
                    "git checkout and git on PATH")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


class Built:
    """The wheel, what it was built from, and what the build left in its source tree."""

    def __init__(self, wheel: Path, tracked: list[str], before: set[str], after: set[str]):
        self.wheel, self.tracked, self.before, self.after = wheel, tracked, before, after
        with zipfile.ZipFile(wheel) as z:
            self.names = z.namelist()
            self.license = z.read(f"llm_magic-{_version()}.dist-info/licenses/LICENSE").decode()
            self.metadata = z.read(f"llm_magic-{_version()}.dist-info/METADATA").decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    try:
        import hatchling  # noqa: F401  (the build backend, used without build isolation)
    except ImportError:
        pytest.fail("building the wheel offline needs hatchling in this environment: "
                    "pip install -e '.[test]' (the test extra has it)")
    tracked = _tracked_files()
    work = tmp_path_factory.mktemp("wheel")
    src, out = work / "src", work / "dist"
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    before = _tree(src)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", out], cwd=src)
    wheels = list(out.glob("llm_magic-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {sorted(_tree(out))}"
    return Built(wheels[0], tracked, before, _tree(src))


class Venv:
    """A fresh virtual environment with the wheel installed."""

    def __init__(self, root: Path):
        self.root = root
        self.python = root / "bin" / "python"
        self.site = Path(_run([self.python, "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())

    def python_out(self, code: str) -> Any:
        """Run ``code`` in the environment (outside the working tree); its printed JSON."""
        return json.loads(_run([self.python, "-c", code], cwd=self.root))


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    env = Venv(root)
    # This environment's packages, as plain paths (their .pth files, the editable hook
    # among them, are not processed). The folders come after the new site-packages.
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (env.site / "_llm_magic_test_deps.pth").write_text("".join(f"{p}\n" for p in here))
    # --ignore-installed: the llm_magic of this environment is visible on those paths;
    # pip must neither uninstall it nor count it as installed.
    _run([env.python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          built.wheel], cwd=root)
    return env


# -- the wheel ------------------------------------------------------------------------------


def test_the_wheel_holds_the_package_its_assets_and_license_only(built: Built):
    dist_info = f"llm_magic-{_version()}.dist-info/"
    package = {n for n in built.names if n.startswith("llm_magic/")}
    others = {n.removeprefix(dist_info) for n in built.names if not n.startswith("llm_magic/")}
    assert others == DIST_INFO, f"beside the package: {sorted(others)}"
    # Exactly the tracked files of the package: no bytecode, caches or build leftovers.
    assert package == {n for n in built.tracked if n.startswith("llm_magic/")}
    static = {n for n in package if n.startswith("llm_magic/widgets/static/")}
    assert {"llm_magic/widgets/static/attention.js", "llm_magic/widgets/static/attention.css",
            "llm_magic/widgets/static/widgets.css"} <= static
    assert any(n.endswith(".js") for n in static) and any(n.endswith(".css") for n in static)
    demo = {n.removeprefix("llm_magic/demo/model/") for n in package
            if n.startswith("llm_magic/demo/model/")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= demo
    for name in built.names:
        assert not name.startswith(NEVER), name
        assert "__pycache__" not in name and not name.endswith((".pyc", ".pyo")), name
        assert ".egg-info" not in name, name
    assert built.license == (ROOT / "LICENSE").read_text()
    assert "MIT License" in built.license
    assert f"\nVersion: {_version()}\n" in built.metadata
    assert "\nLicense-Expression: MIT\n" in built.metadata


def test_the_build_writes_nothing_into_its_source_tree(built: Built):
    assert built.after == built.before, sorted(built.after ^ built.before)


# -- the installed package ------------------------------------------------------------------


def test_the_new_environment_imports_the_installed_package(venv: Venv):
    found = venv.python_out(
        "import json, sys, importlib.metadata as m, llm_magic, llm_magic.demo\n"
        "d = m.distribution('llm_magic')\n"
        "print(json.dumps({'file': llm_magic.__file__, 'version': llm_magic.__version__,\n"
        "    'demo': str(llm_magic.demo.MODEL_DIR), 'path': sys.path, 'prefix': sys.prefix,\n"
        "    'dist': str(d.locate_file('llm_magic/__init__.py')), 'meta': d.version}))")
    assert Path(found["prefix"]) == venv.root
    assert Path(found["file"]).is_relative_to(venv.site), found["file"]
    assert Path(found["dist"]) == Path(found["file"])
    assert Path(found["demo"]).is_relative_to(venv.site), found["demo"]
    assert found["version"] == found["meta"] == _version()
    assert not [p for p in found["path"] if p and Path(p).resolve() == ROOT], found["path"]


# -- in a real kernel -----------------------------------------------------------------------


class Kernel:
    """A Jupyter kernel of the new environment, and the iopub messages it sent."""

    def __init__(self, kc: Any):
        self.kc = kc

    def run(self, code: str) -> list[dict[str, Any]]:
        """Execute ``code``; its iopub messages up to idle. A failure fails the test."""
        msg_id = self.kc.execute(code)
        msgs = [m for _, m in collect(self.kc, msg_id, TIMEOUT)]
        reply = reply_to(self.kc, msg_id, TIMEOUT)
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", errors
        return msgs

    def value(self, expression: str) -> Any:
        """The value of a JSON-able ``expression`` in the kernel."""
        msgs = self.run(f"import json as _j; print(_j.dumps({expression}))")
        return json.loads("".join(m["content"]["text"] for m in msgs
                                  if m["msg_type"] == "stream"))


@pytest.fixture(scope="module")
def kernel(venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    home = tmp_path_factory.mktemp("kernel")
    spec = home / "kernels" / "llm-magic-wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llm_magic wheel", "language": "python"}))
    km = KernelManager(kernel_name="llm-magic-wheel",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
                       connection_file=str(home / "connection.json"))
    env = _env(HF_HUB_OFFLINE="1", LLM_MAGIC_WARM_UP="0", TOKENIZERS_PARALLELISM="false",
               LLM_MAGIC_HISTORY=str(home / "history.sqlite"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_CONFIG_DIR=str(home / "config"))
    km.start_kernel(env=env, cwd=str(home))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        yield Kernel(kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_kernel_runs_the_magic_and_the_attention_view_from_the_wheel(venv: Venv,
                                                                        kernel: Kernel):
    # A line only the installed copy of the view's module has: what reaches the page
    # must have been read from the new environment, not from the working tree.
    esm = venv.site / "llm_magic" / "widgets" / "static" / "attention.js"
    marker = f"// installed copy {uuid.uuid4().hex}"
    esm.write_text(esm.read_text() + f"\n{marker}\n")

    assert Path(kernel.value("__import__('sys').prefix")) == venv.root
    kernel.run("%load_ext llm_magic")
    assert Path(kernel.value("__import__('llm_magic').__file__")).is_relative_to(venv.site)
    assert kernel.value("__import__('llm_magic').__version__") == _version()

    msgs = kernel.run("%%llm demo -n 5\nThe import statement")
    shown = [m["content"]["data"]["text/plain"] for m in msgs
             if m["msg_type"] in ("display_data", "update_display_data")]
    text = kernel.value("_llm.text")
    assert text.strip() and shown and shown[-1] == text
    assert kernel.value("_llm.model") == "demo"
    assert 0 < kernel.value("_llm.stats.new_tokens") <= 5
    assert Path(kernel.value("str(__import__('llm_magic').demo.MODEL_DIR)")).is_relative_to(
        venv.site)

    msgs = kernel.run("import llm_magic as lm\nlm.attention('The import statement', model='demo')")
    opened = [m["content"]["data"]["state"] for m in msgs if m["msg_type"] == "comm_open"
              and m["content"]["data"].get("state", {}).get("_anywidget_id", "").endswith(
                  "AttentionWidget")]
    assert len(opened) == 1, [m["msg_type"] for m in msgs]
    # the view's module is the shared helpers, then attention.js as installed
    assert opened[0]["_esm"].endswith(esm.read_text()) and marker in opened[0]["_esm"]
    assert any(m["msg_type"] == "execute_result"
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
               for m in msgs)

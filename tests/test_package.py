"""The package as users get it: no import cycles, a wheel that carries both models and the dashboard, and
`diffood app` with the shipped Streamlit settings."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from diffood.cli import app_script, streamlit_flags
from tests.conftest import ROOT


def _imports() -> dict[str, set[str]]:
    """diffood's modules (subpackages' as "scores.base") and the diffood modules each imports, imports inside
    functions included; importing a package counts as importing its __init__."""
    root = ROOT / "diffood"
    mods = {}
    for p in root.rglob("*.py"):
        name = p.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    mods.pop("__init__", None)

    def resolve(module: str) -> str | None:
        while module and module not in mods:
            module = module.rpartition(".")[0]
        return module or None

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = ".".join([*base, *([node.module] if node.module else [])])
                    targets = [prefix] if node.module else [f"{prefix}.{a.name}".strip(".") for a in node.names]
                    targets += [f"{prefix}.{a.name}".strip(".") for a in node.names]
                elif (node.module or "").startswith("diffood."):
                    targets = [node.module[len("diffood."):]] + [f"{node.module[len('diffood.'):]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name[len("diffood."):] for a in node.names if a.name.startswith("diffood.")]
            for t in targets:
                found = resolve(t)
                if found:
                    graph[m].add(found)
    return {m: deps - {m} for m, deps in graph.items()}


def test_no_import_cycles_among_diffood_modules():
    graph = _imports()
    assert graph["verdict"] >= {"evaluate", "sets", "scores", "scores.base"} and "inputs" in graph["datasets"]
    assert graph["scores.knn"] >= {"features", "scores.base"} and "scores.base" in graph["scores"]  # the walk sees imports
    cycles, done = [], set()

    def visit(m, stack):
        for dep in graph[m]:
            if dep in stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, stack + [dep])
        done.add(m)

    for m in graph:
        visit(m, [m])
    assert not cycles, cycles


def test_diffood_app_runs_the_dashboard_with_the_shipped_settings():
    assert app_script() == ROOT / "app.py"
    flags = streamlit_flags(ROOT / ".streamlit" / "config.toml")
    assert {"--server.address=127.0.0.1", "--server.maxUploadSize=20", "--server.fileWatcherType=none",
            "--server.headless=true"} <= set(flags)


@pytest.mark.slow
def test_the_wheel_holds_both_models_the_dashboard_and_the_command(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    [wheel] = tmp_path.glob("diffood-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / "diffood" / "assets").rglob("*") if p.is_file()]
    assert any("model-mnist/" in n for n in shipped) and set(shipped) <= names  # every asset, both models
    assert {"diffood_app/app.py", "diffood_app/pages/common.py", "diffood_app/.streamlit/config.toml"} <= names
    info = next(n for n in names if n.endswith("entry_points.txt"))
    assert "diffood = diffood.cli:main" in zipfile.ZipFile(wheel).read(info).decode()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(Path(n).name == "state.safetensors" for n in names)


def test_diffood_app_passes_its_options_to_streamlit_after_the_shipped_ones(monkeypatch):
    from diffood import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["app", "--server.port", "8502", "--server.address", "0.0.0.0"]) == 0
    [command] = calls
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("app.py")
    assert command[-4:] == ["--server.port", "8502", "--server.address", "0.0.0.0"]  # last: they win
    assert "--server.address=127.0.0.1" in command and "--server.maxUploadSize=20" in command


def test_the_repository_stays_light():
    """No tracked file over 20 MB; the MNIST model's folder under 15 MB."""
    import subprocess
    from pathlib import Path

    from diffood.model import SHIPPED_MODELS

    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {f.decode(): (repo / f.decode()).stat().st_size for f in tracked if f and (repo / f.decode()).is_file()}
    assert max(sizes.values()) < 20_000_000, max(sizes, key=sizes.get)
    assert sum(f.stat().st_size for f in SHIPPED_MODELS["mnist"].rglob("*") if f.is_file()) < 15_000_000

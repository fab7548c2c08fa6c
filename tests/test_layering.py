"""The layers import in one direction: http (service.api) → core (service.core) ← worker, never sideways.

Each check imports the modules in a fresh interpreter and looks at what got loaded, so an indirect import (core
importing something that imports Litestar) counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted(f"service.core.{path.stem}" for path in (ROOT / "service/core").glob("*.py")
                      if path.stem != "__init__")
WORKER_MODULES = sorted(f"worker.{path.stem}" for path in (ROOT / "worker").glob("*.py") if path.stem != "__init__")
CONTROLLERS = sorted((ROOT / "service/api/controllers").glob("*.py"))


def loaded_after_importing(modules: list[str]) -> list[str]:
    """The names in sys.modules after importing `modules` in a new interpreter."""
    script = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
              "print(json.dumps(list(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def under(names: list[str], *packages: str) -> list[str]:
    return sorted(name for name in names if any(name == p or name.startswith(p + ".") for p in packages))


def test_the_layer_lists_are_not_empty() -> None:
    assert "service.core.booking" in CORE_MODULES and "worker.jobs" in WORKER_MODULES and len(CONTROLLERS) >= 5


def test_core_loads_no_web_framework_no_worker_runtime_and_no_other_layer() -> None:
    loaded = loaded_after_importing(CORE_MODULES)
    assert under(loaded, "litestar", "arq", "uvicorn", "worker", "service.api") == []


def test_the_worker_loads_no_litestar_and_no_http_layer() -> None:
    loaded = loaded_after_importing(WORKER_MODULES)
    assert "worker.jobs" in loaded
    assert under(loaded, "litestar", "service.api") == []


def test_the_api_loads_no_worker_and_no_arq() -> None:
    loaded = loaded_after_importing(["service.api.app"])
    assert "litestar" in loaded
    assert under(loaded, "worker", "arq") == []


@pytest.mark.parametrize("controller", CONTROLLERS, ids=lambda path: path.stem)
def test_no_controller_imports_another(controller: Path) -> None:
    tree = ast.parse(controller.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert [name for name in imported if name.startswith("service.api.controllers")] == []

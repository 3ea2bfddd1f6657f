"""The layout's rules, read from the code itself: what may import what, and how big a module may grow.

README "Development" states these rules; this test keeps them true.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SERVICE = {"tests", "bench"}
MAX_LINES = 500
HTTP_LIBRARIES = {"requests", "urllib3", "http", "httpx", "aiohttp", "socket", "flask", "werkzeug", "gevent"}
PURE_MODULES = {"converters", "streaming", "redaction", "placeholders", "drift", "keepalive", "dialects"}
UPSTREAM_CLIENT = "upstream"
WEB_LAYER = {"app", "fronts"}  # the only code that may touch Flask and its request globals


def service_modules() -> dict[str, Path]:
    """Every module of the running service and the importer, by dotted name."""
    found = {path.stem: path for path in ROOT.glob("*.py")}
    for package in ROOT.iterdir():
        if (package / "__init__.py").is_file() and package.name not in NOT_SERVICE:
            for path in package.glob("*.py"):
                name = package.name if path.stem == "__init__" else f"{package.name}.{path.stem}"
                found[name] = path
    return found


MODULES = service_modules()


def top(name: str) -> str:
    return name.split(".")[0]


def imports(path: Path, module_level_only: bool = False) -> list[tuple[str, list[str], ast.AST]]:
    """(module, names, node) for every import in a file; with ``module_level_only``, only those run at
    import time (not in functions, nor under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node))
    return found


def in_group(name: str, group: set[str]) -> bool:
    return top(name) in group


def test_the_layout_finds_the_modules_it_rules():
    assert {
        "app",
        "converters",
        "streaming",
        "provider_loader",
        "upstream",
        "dialects.qwen",
        "fronts.openai_chat",
    } <= set(MODULES)
    assert not any(name.startswith("tests") for name in MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if in_group(n, PURE_MODULES)))
def test_pure_modules_import_neither_flask_nor_an_http_library(name):
    bad = [module for module, _, _ in imports(MODULES[name]) if top(module) in HTTP_LIBRARIES]
    assert bad == [], f"{name} imports {bad}: it must stay pure (no Flask, no HTTP)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_upstream_client_imports_requests_or_urllib3(name):
    bad = [module for module, _, _ in imports(MODULES[name]) if top(module) in ("requests", "urllib3")]
    assert name == UPSTREAM_CLIENT or bad == [], f"{name} imports {bad}; go through {UPSTREAM_CLIENT}.py"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not in_group(n, WEB_LAYER)))
def test_nothing_below_the_fronts_uses_flask(name):
    bad = [module for module, _, _ in imports(MODULES[name]) if top(module) in ("flask", "werkzeug")]
    assert bad == [], f"{name} imports {bad}: Flask stays in app.py and fronts/"


def service_closure() -> set[str]:
    """The modules ``python app.py`` loads: module-level imports followed from app."""
    seen, todo = set(), ["app"]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for module, names, _ in imports(MODULES[name], module_level_only=True):
            todo.append(module)
            todo.extend(f"{module}.{n}" for n in names)  # from fronts import openai_chat
    return seen


def test_the_running_service_never_imports_the_importer():
    closure = service_closure()
    assert {"app", "fronts.openai_chat", "dialects.qwen", "upstream", "pipeline"} <= closure
    assert not any(in_group(name, {"importer"}) for name in closure), closure
    for name in closure:
        for module, _, node in imports(MODULES[name]):
            if in_group(module, {"importer"}):
                # Only the command line entry reaches it, inside main().
                assert name == "provider_loader" and node.col_offset > 0, f"{name} imports {module}"


def test_the_importer_stays_unloaded_in_a_running_app():
    code = "import sys, app; app.create_app({'TESTING': True}); print(sorted(m for m in sys.modules if m.startswith('importer')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small_and_say_their_job(name):
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(ROOT)} is over {MAX_LINES} lines"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.splitlines()[0].strip(), f"{name} opens with no docstring"

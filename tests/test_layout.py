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
# Imports point inward: a module may use its own layer and the layers before it, never a later one.
LAYERS = [
    {
        "converters",
        "streaming",
        "redaction",
        "placeholders",
        "drift",
        "keepalive",
        "dialects",
        "credentials",
        "tool_prompt",
        "tool_emulation",
        "tool_parser",
        "reply_blocks",
        "json_codec",
    },  # pure
    # folders, settings, transport, state
    {"settings", "provider_loader", "provider_steps", "upstream", "upstream_requests", "model_catalog", "state"},
    {"accounts", "conversations", "refresh", "pipeline", "routing", "services"},  # one request's work
    {"fronts"},  # the client APIs
    {"app", "probe", "status_page", "serving"},  # the app, its commands, status page and gunicorn hooks
]
IMPORTER = "importer"  # beside the service: may use the first two layers, and nothing uses it
PURE = LAYERS[0]
HTTP_AND_WEB = {"requests", "urllib3", "http", "httpx", "aiohttp", "socket", "flask", "werkzeug", "gevent"}
FILES_AND_PROCESSES = {"os", "pathlib", "io", "shutil", "subprocess", "sqlite3", "dotenv", "tempfile"}
UPSTREAM_CLIENT = "upstream"
SETTINGS = "settings"
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
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def layer_of(name: str) -> int | None:
    return next((index for index, layer in enumerate(LAYERS) if top(name) in layer), None)


def imports(name: str, module_level_only: bool = False) -> list[tuple[str, list[str], ast.AST]]:
    """(module, names, node) for every import of a module; with ``module_level_only``, only those
    run at import time (not in functions, nor under ``if TYPE_CHECKING:``)."""
    tree = TREES[name]
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((module, [alias.name for alias in node.names], node))
    return found


def local_imports(name: str) -> list[tuple[str, ast.AST]]:
    return [(module, node) for module, _, node in imports(name) if top(module) in {top(n) for n in MODULES}]


def inside_function(name: str, node: ast.AST, function: str) -> bool:
    functions = [f for f in ast.walk(TREES[name]) if isinstance(f, ast.FunctionDef) and f.name == function]
    return any(node in ast.walk(f) for f in functions)


def test_the_layout_finds_the_modules_it_rules():
    expected = {"app", "converters", "streaming", "provider_loader", "upstream", "dialects.qwen", "fronts.openai_chat"}
    assert expected <= set(MODULES)
    assert not any(name.startswith("tests") for name in MODULES)
    unplaced = sorted(n for n in MODULES if layer_of(n) is None and top(n) != IMPORTER)
    assert unplaced == [], f"give these modules a layer in this test and README: {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_are_absolute(name):
    relative = [module for module, _, _ in imports(name) if module.startswith(".")]
    assert relative == [], f"{name}: write imports in full ({relative})"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if top(n) != IMPORTER))
def test_imports_point_inward(name):
    own = layer_of(name)
    outward = [
        module
        for module, node in local_imports(name)
        if (layer_of(module) or 0) > own
        and not (name == "app" and module == "probe")
        or top(module) == IMPORTER
        and not (name == "provider_loader" and inside_function(name, node, "main"))
    ]
    assert outward == [], f"{name} (layer {own}) imports {outward}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if top(n) == IMPORTER))
def test_the_importer_uses_only_the_first_layers(name):
    beyond = [m for m, _ in local_imports(name) if top(m) != IMPORTER and (layer_of(m) is None or layer_of(m) > 1)]
    assert beyond == [], f"{name} imports {beyond}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if top(n) in PURE))
def test_pure_modules_do_no_io_and_import_neither_flask_nor_http(name):
    bad = [m for m, _, _ in imports(name) if top(m) in HTTP_AND_WEB | FILES_AND_PROCESSES]
    assert bad == [], f"{name} imports {bad}: it must stay pure"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_upstream_client_imports_requests_or_urllib3(name):
    bad = [module for module, _, _ in imports(name) if top(module) in ("requests", "urllib3")]
    assert name == UPSTREAM_CLIENT or bad == [], f"{name} imports {bad}; go through {UPSTREAM_CLIENT}.py"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if top(n) not in WEB_LAYER))
def test_nothing_below_the_fronts_uses_flask(name):
    bad = [module for module, _, _ in imports(name) if top(module) in ("flask", "werkzeug")]
    assert bad == [], f"{name} imports {bad}: Flask stays in app.py and fronts/"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != SETTINGS))
def test_only_settings_reads_the_environment_and_env_files(name):
    dotenv = [module for module, _, _ in imports(name) if top(module) == "dotenv"]
    readers = {"environ", "getenv", "putenv", "environb"}
    environ = [
        ast.unparse(node)
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.Attribute) and node.attr in readers and ast.unparse(node.value) == "os"
    ]
    environ += [f"from os import {n}" for module, names, _ in imports(name) if module == "os" for n in names]
    assert (dotenv, environ) == ([], []), f"{name} reads the environment itself: ask settings.py"


def service_closure() -> set[str]:
    """The modules ``python app.py`` loads: module-level imports followed from app."""
    seen, todo = set(), ["app"]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for module, names, _ in imports(name, module_level_only=True):
            todo.append(module)
            todo.extend(f"{module}.{n}" for n in names)  # from fronts import openai_chat
    return seen


def test_the_running_service_never_imports_the_importer():
    closure = service_closure()
    assert {"app", "fronts.openai_chat", "dialects.qwen", "upstream", "pipeline"} <= closure
    assert not any(top(name) == IMPORTER for name in closure), closure


def test_the_importer_stays_unloaded_in_a_running_app():
    code = "import sys, app; app.create_app({'TESTING': True}); print(sorted(m for m in sys.modules if m.startswith('importer')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small_and_say_their_job(name):
    path = MODULES[name]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES, f"{path.relative_to(ROOT)} is too long"
    docstring = ast.get_docstring(TREES[name])
    assert docstring and docstring.splitlines()[0].strip(), f"{name} opens with no docstring"

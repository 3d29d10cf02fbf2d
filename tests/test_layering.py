"""Imports point down: the core, config and mapping know nothing of client, server or CLI;
client and server never import each other; only the CLI reads argv and the environment; the
token's protocol constants are spelled in authd/token.py alone.

The source is read with `ast`, so imports inside functions (authd imports lazily in places) and
under `TYPE_CHECKING` count as much as those at the top. Each checker is also fed a small bad
module, to show that it can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import authd

ROOT = Path(authd.__file__).parent

# Which packages each layer may not import. The core is every top-level module of authd.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("authd.client", "authd.server", "authd.cli"),
    "config": ("authd.client", "authd.server", "authd.cli"),
    "mapping": ("authd.client", "authd.server", "authd.cli"),
    "client": ("authd.server", "authd.cli"),
    "server": ("authd.client", "authd.cli"),
    "cli": (),
}
# Reads of the process's argv and environment: (module, attribute).
PROCESS_INPUTS = {
    ("os", "environ"),
    ("os", "environb"),
    ("os", "getenv"),
    ("os", "getenvb"),
    ("sys", "argv"),
    ("sys", "orig_argv"),
}
# Protocol constants and the one module that may spell them.
CONSTANTS = {"k8s-aws-v1.": "authd.token", "x-k8s-aws-id": "authd.token"}


def module_name(path: Path) -> str:
    """`authd/server/app.py` -> `authd.server.app`; a package's `__init__` is the package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer a module belongs to: its subpackage under authd, or `core` for top level."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()):
        return parts[1]
    return "core"


def sources() -> Iterator[tuple[str, str, bool]]:
    """(module name, source, is a package) of every module of authd except `__main__`."""
    for path in sorted(ROOT.rglob("*.py")):
        if path.name != "__main__.py":
            yield module_name(path), path.read_text(), path.name == "__init__.py"


def imported(module: str, source: str, *, package: bool = False) -> set[str]:
    """Every module `source` imports, anywhere in it; `from a import b` counts as a and a.b."""
    base = module.split(".") if package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = base[: len(base) - node.level + 1] if node.level else []
            parent = ".".join([*prefix, node.module] if node.module else prefix)
            names.add(parent)
            names.update(f"{parent}.{alias.name}" for alias in node.names)
    return names


def layer_violations(module: str, source: str, *, package: bool = False) -> list[str]:
    """`module imports X` for each import its layer forbids."""
    forbidden = FORBIDDEN[layer(module)]
    return sorted(
        f"{module} imports {name}"
        for name in imported(module, source, package=package)
        if any(name == bad or name.startswith(f"{bad}.") for bad in forbidden)
    )


def process_input_reads(source: str) -> list[str]:
    """`os.environ`, `sys.argv`, ... wherever `source` reads them, aliases and
    `from os import environ` included."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> os or sys
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in ("os", "sys"):
                    aliases[alias.asname or top] = top if alias.asname is None else alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "sys"):
            for alias in node.names:
                if (node.module, alias.name) in PROCESS_INPUTS:
                    found.append(f"from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = aliases.get(node.value.id)
            if (owner, node.attr) in PROCESS_INPUTS:
                found.append(f"{owner}.{node.attr} (line {node.lineno})")
    return found


def spelled_constants(source: str) -> set[str]:
    """The protocol constants written in `source`'s string literals (docstrings excepted)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        constant
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        for constant in CONSTANTS
        if constant in node.value
    }


# --- the rules, over the real tree -----------------------------------------------------------


def test_the_tree_has_every_layer() -> None:
    """The walk sees modules of every layer (a broken walk would pass every rule vacuously)."""
    assert {layer(module) for module, _, _ in sources()} == set(FORBIDDEN)
    assert "authd.server.app" in dict((m, s) for m, s, _ in sources())


def test_imports_point_down() -> None:
    """Core, config and mapping import no client, server or CLI; client and server never
    import each other."""
    violations = [
        line
        for module, source, package in sources()
        for line in layer_violations(module, source, package=package)
    ]
    assert violations == []


def test_only_the_cli_reads_argv_and_the_environment() -> None:
    """No module outside authd/cli/ reads sys.argv, os.environ, os.getenv or os.environb."""
    reads = {
        module: found
        for module, source, _ in sources()
        if layer(module) != "cli" and (found := process_input_reads(source))
    }
    assert reads == {}


def test_protocol_constants_have_one_owner() -> None:
    """The token prefix and the cluster-ID header are written in authd/token.py only."""
    owners = {
        (constant, module)
        for module, source, _ in sources()
        for constant in spelled_constants(source)
    }
    assert owners == set(CONSTANTS.items())


# --- each checker can fail -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "bad"),
    [
        ("authd.metrics", "from authd.server.app import App\n", "authd.server.app"),
        ("authd.logs", "def f():\n    import authd.cli.token\n", "authd.cli.token"),
        ("authd.config", "from authd import client\n", "authd.client"),
        ("authd.mapping.chain", "from authd.server import review\n", "authd.server"),
        ("authd.client.presign", "from authd.server.sts import client\n", "authd.server.sts"),
        ("authd.server.app", "from ..client import presign\n", "authd.client"),
        (
            "authd.token",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from authd.cli import x\n",
            "authd.cli",
        ),
    ],
)
def test_an_upward_import_is_flagged(module: str, source: str, bad: str) -> None:
    """A synthetic module importing a layer it may not, lazily or relatively, is reported."""
    assert f"{module} imports {bad}" in layer_violations(module, source)


def test_allowed_imports_are_not_flagged() -> None:
    """Downward imports pass: the server may use the core, config, mapping and itself."""
    source = "from authd import token\nfrom authd.config import X\nfrom . import review\n"
    assert layer_violations("authd.server.app", source) == []
    assert layer_violations("authd.cli.token", "from authd.client import presign\n") == []


@pytest.mark.parametrize(
    "source",
    [
        "import os\nx = os.environ['HOME']\n",
        "import os\ndef f():\n    return os.getenv('HOME')\n",
        "import os as o\nx = o.environb\n",
        "from os import environ\n",
        "import sys\nargs = sys.argv[1:]\n",
        "from sys import argv\n",
        "import os.path\nx = os.environ\n",
    ],
)
def test_a_process_input_read_is_flagged(source: str) -> None:
    """Reading argv or the environment, however spelled, is reported."""
    assert process_input_reads(source) != []


def test_other_os_and_sys_use_is_not_flagged() -> None:
    """os.stat, sys.stderr and a local variable named environ are fine."""
    source = "import os, sys\nos.stat('.')\nsys.stderr.write('x')\nenviron = {}\nenviron.get('A')\n"
    assert process_input_reads(source) == []


def test_a_copied_constant_is_flagged_but_a_docstring_is_not() -> None:
    """A literal `k8s-aws-v1.` in code is found; the same text in a docstring is not."""
    source = '"""Tokens start with k8s-aws-v1."""\nPREFIX = "k8s-aws-v1."\n'
    assert spelled_constants(source) == {"k8s-aws-v1."}
    assert spelled_constants('def f():\n    """Sends x-k8s-aws-id."""\n') == set()
    assert spelled_constants('h = {f"x-k8s-aws-id": 1}\n') == {"x-k8s-aws-id"}


MAX_MODULE_LINES = 700


def test_no_module_is_longer_than_700_lines() -> None:
    """A module past 700 lines has likely grown a second job: split it along that seam."""
    long = {
        str(path.relative_to(ROOT)): count
        for path in ROOT.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}

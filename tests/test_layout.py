"""The shape of the package: every import points down the layers, none goes in a circle, no module
reaches into another's private names, and ``import tapengine`` loads the data plane only.

The layers, top to bottom (a module may import from its own layer or any lower one)::

    the package, __main__
    the CLI (tapengine.cli.*), its shared parts (cli.common)
    the benchmark harness
    topology, metrics / engine, traffic, cleanup, compat.pytun, pcap
    devices, kstats, udpport, vxlan (and the small programs naive_forward, nsexec)
    aio -> tun -> netlink -> netns -> validate -> errors, marks, signals
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tapengine

SOURCE = Path(tapengine.__file__).parent
LAYERS: list[set[str]] = [
    {"errors", "marks", "signals"},
    {"validate"},
    {"netns", "privileges"},
    {"netlink"},
    {"tun"},
    {"aio"},
    {"devices", "kstats", "naive_forward", "nsexec", "udpport", "vxlan"},
    {"cleanup", "traffic", "engine", "compat", "compat.pytun", "pcap", "stages"},
    {"topology", "metrics"},
    {"benchrun"},
    {"benchplot"},
    {"cli.common"},
    {"cli"},  # the CLI's package and every subcommand module
    {"", "__main__"},  # the package itself
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts).removesuffix("__init__").rstrip(".")


def layer_of(module: str) -> int:
    if module.startswith("cli.") and module not in set().union(*LAYERS):
        module = "cli"  # a subcommand module
    for index, layer in enumerate(LAYERS):
        if module in layer:
            return index
    raise AssertionError(f"tapengine.{module} is in no layer of tests/test_layout.py: place it")


def imports(path: Path) -> list[tuple[str, str, int]]:
    """(imported tapengine module, imported name or "", line) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tapengine":
                found += [(alias.name, "", node.lineno) for alias in node.names]
            elif node.module.startswith("tapengine."):
                target = node.module.removeprefix("tapengine.")
                found += [(target, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name.removeprefix("tapengine."), "", node.lineno)
                      for alias in node.names if alias.name.startswith("tapengine.")]  # fmt: skip
    return found


def is_extension(module: str) -> bool:
    """A compiled data-plane module (``_ring``, ...): below every Python module, imports none."""
    return module.startswith("_") and not (SOURCE / f"{module}.py").exists()


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target, _, line in imports(path):
            if target in ("__version__",) or is_extension(target) or target not in MODULES:
                continue
            if layer_of(target) > layer_of(module):
                wrong.append(f"{path.name}:{line}: {module or 'tapengine'} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle() -> None:
    graph = {
        module: {t for t, _, _ in imports(path) if t in MODULES and t != module}
        for module, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*trail, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{path.name}:{line}: from tapengine.{target} import {name}"
        for module, path in MODULES.items()
        for target, name, line in imports(path)
        if name.startswith("_") and not name.startswith("__")
    ]
    attributes = []
    for _module, path in MODULES.items():
        aliases = {alias for alias, _, _ in imports(path) if alias in MODULES}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):  # fmt: skip
                attributes.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not private + attributes, "\n".join(private + attributes)


def test_tapengine_never_runs_ip() -> None:
    for path in MODULES.values():
        text = path.read_text()
        assert "ip netns exec" not in text and '"ip",' not in text, path


def test_import_tapengine_loads_the_data_plane_only() -> None:
    code = (
        "import sys, tapengine\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pyroute2', 'tapengine.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    loaded = eval(result.stdout)  # a list of module names printed by repr
    assert not [m for m in loaded if m.startswith("pyroute2")], loaded
    assert all(m.split(".")[1].startswith("_") or m == "tapengine.errors" for m in loaded), loaded


def test_control_plane_names_load_on_first_use() -> None:
    code = (
        "import sys, tapengine\n"
        "assert 'tapengine.devices' not in sys.modules\n"
        "assert tapengine.create_tap is tapengine.devices.create_tap\n"
        "assert set(tapengine.__all__) <= set(dir(tapengine))\n"
        "missing = [n for n in tapengine.__all__ if not hasattr(tapengine, n)]\n"
        "assert not missing, missing\n"
        "try:\n"
        "    tapengine.no_such_name\n"
        "except AttributeError as err:\n"
        "    assert 'no_such_name' in str(err)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""The tree's layers: every project module belongs to one, and imports only from its own layer or lower ones.

The layers are listed bottom to top in ``LAYERS`` (docs/architecture.md draws
the same map); imports inside functions count, as do imports under
``TYPE_CHECKING``. A module that fits no layer fails the test too, so a new
file has to be placed in the map.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("mlet.core",)),
    ("kernels", ("mlet.kernels",)),
    ("data", ("mlet.data",)),
    ("model", ("mlet.model", "mlet_layers", "dlrm_model")),
    ("training", ("mlet.training",)),
    ("parallel", ("mlet.parallel",)),
    ("serving", ("mlet.serving",)),
    ("commands", ("mlet.cli", "dlrm_mlet", "data_utils", "checkpoint")),
    ("repro", ("mlet.repro",)),
]
SUBLAYERS: dict[str, list[str]] = {
    # inside a layer, an order too: the click model under the raw files under the sources
    "data": [
        "mlet.data.synthetic",
        "mlet.data.preprocessing",
        "mlet.data.flags",
        "mlet.data.sources",
        "mlet.data.device",
        "mlet.data.device_click",
    ],
    "model": ["mlet.model", "mlet_layers", "dlrm_model"],
    # the command-line helpers under the command files
    "commands": ["mlet.cli", "dlrm_mlet", "data_utils", "checkpoint"],
}


def module_name(path: Path) -> str:
    """``mlet/core/batch.py`` -> ``mlet.core.batch`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    """The project's importable modules: the files at the top and the ``mlet`` package."""
    files = [*ROOT.glob("*.py"), *ROOT.glob("mlet/**/*.py")]
    return {module_name(p): p for p in files}


def layer_of(module: str) -> int | None:
    """Position of ``module``'s layer in :data:`LAYERS` (``None``: none)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def rank_in_layer(module: str) -> int:
    """Position inside its layer's :data:`SUBLAYERS` order (0 where the layer has none)."""
    order = SUBLAYERS.get(LAYERS[layer_of(module)][0], [])
    return next((i for i, p in enumerate(order) if module == p or module.startswith(p + ".")), 0)


def imported(path: Path, here: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path``, the file of module ``here`` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def test_every_module_has_a_layer() -> None:
    modules = library_modules()
    assert "mlet.core.batch" in modules and "dlrm_mlet" in modules  # the walk sees the tree
    homeless = sorted(m for m in modules if m != "mlet" and layer_of(m) is None)
    assert not homeless, f"modules outside every layer of LAYERS: {homeless}"


def test_imports_point_down() -> None:
    modules = library_modules()
    known = set(modules)
    upward = []
    for module, path in modules.items():
        if module == "mlet":
            continue
        for target in imported(path, module, known):
            if target == "mlet" or layer_of(target) is None:
                continue
            if (layer_of(target), rank_in_layer(target)) > (layer_of(module), rank_in_layer(module)):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_the_check_sees_an_upward_import(tmp_path) -> None:
    """The checker itself: an import of the training loop from the core is found."""
    probe = ROOT / "mlet" / "core" / "batch.py"
    fake = tmp_path / "batch.py"
    fake.write_text(probe.read_text() + "\nfrom mlet.training.trainer import Trainer\n")
    known = set(library_modules())
    assert "mlet.training.trainer" in imported(fake, "mlet.core.batch", known)
    assert layer_of("mlet.training.trainer") > layer_of("mlet.core.batch")

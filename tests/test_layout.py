"""The package's layers point one way: commands/ (and cli.py above it) use report/, evaluation/ and the
rest; nothing below imports commands/, not even lazily inside a function (that is how
report/results_page.py and commands/benchmark_table.py once imported each other)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mvtec_ad"
# the modules that may import mvtec_ad.commands: the CLI that dispatches to it, and commands/ itself
ABOVE_COMMANDS = ("cli.py", "__main__.py", "commands/")


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module `path` (a file under `root`) imports, at any depth of its code (functions, classes,
    if-blocks), as an absolute name; relative imports resolved."""
    package = path.relative_to(root).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from mvtec_ad import commands`
    return names


def test_imported_modules_sees_lazy_relative_and_from_package_imports(tmp_path):
    fake = tmp_path / "mvtec_ad"
    (fake / "report").mkdir(parents=True)
    module = fake / "report" / "page.py"
    module.write_text(
        "import os\n"
        "def f():\n"
        "    from mvtec_ad.commands.benchmark_table import OK\n"
        "    from ..commands import demo\n"
        "    from mvtec_ad import commands\n"
        "    from . import files\n"
    )
    names = imported_modules(module, root=tmp_path)
    assert {"os", "mvtec_ad.commands.benchmark_table", "mvtec_ad.commands.demo"} <= names
    assert {"mvtec_ad.commands", "mvtec_ad.report.files"} <= names


def test_nothing_below_commands_imports_commands():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert any(p.parent.name == "report" for p in modules)  # the walk found the package
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imported_modules(path) if name.split(".")[:2] == ["mvtec_ad", "commands"]
        )
        for path in modules
        if not str(path.relative_to(PACKAGE)).startswith(ABOVE_COMMANDS)
    }
    assert {path: names for path, names in offenders.items() if names} == {}

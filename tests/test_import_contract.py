"""The platform never imports the example domain; the example reaches it only as configured.

The help-desk example (``examples/helpdesk/``: its domain, generators, simulators, bootstrap
and demo flow) is one domain among many: the platform (``loopwright/``, ``tasks/``,
``flows/``, ``models/``) finds it through ``Settings.domain`` and the domain's hooks, never
by import.
Every import statement is checked, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MODULES = ("examples",)
PLATFORM = ("loopwright", "tasks", "flows", "models")


def _platform_files() -> list[Path]:
    return [p for pkg in PLATFORM for p in sorted((REPO / pkg).rglob("*.py"))]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _is_example(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in EXAMPLE_MODULES)


def test_no_platform_module_imports_the_example():
    files = _platform_files()
    assert len(files) > 80  # the walk found the platform
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in files
        for line, module in _imports(path)
        if _is_example(module)
    ]
    assert not offenders, "the platform imports the example:\n" + "\n".join(offenders)


def test_the_contract_catches_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from examples.helpdesk.kb import knowledge_base\n")
    assert [m for _, m in _imports(probe) if _is_example(m)] == [
        "examples.helpdesk.kb",
        "examples.helpdesk.kb.knowledge_base",
    ]
    probe.write_text("import examples.helpdesk as example\n")
    assert any(_is_example(m) for _, m in _imports(probe))

"""The shape of tlplug, checked: small modules without import cycles, and datasette-style
meta-tests that keep every hook and every kind of strategy complete. A kind has its hook,
its recipe fields, its CLI flags, a test and a docs entry; every hook says when it is
called and what comes back, and is implemented by a plugin somewhere in the tests."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import attrs
import pytest

from tlplug.cli.group import cli
from tlplug.plugins import hookspecs
from tlplug.plugins.kinds import KINDS
from tlplug.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "tlplug"
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
TEST_FILES = "".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
# What the tests run: their own files, and those of the guide's examples a test loads
# (tests/test_docs*.py run them with load("name")); an example no test runs does not count.
EXAMPLE = re.compile(r"^<!-- example: ([\w-]+) -->\n```python\n(.*?)^```$", re.M | re.S)
EXAMPLES = dict(EXAMPLE.findall(GUIDE))
TESTS = TEST_FILES + "".join(
    code for name, code in EXAMPLES.items() if f'load("{name}")' in TEST_FILES
)
HOOKS = {
    n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tlplug_")
}
SETUP = {"tlplug_add_kinds", "tlplug_register_commands"}
REGISTRATION = {kind.hook for kind in KINDS.values()}
LIFECYCLE = set(HOOKS) - SETUP - REGISTRATION


def module_names() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The tlplug modules ``path`` imports when it runs (``TYPE_CHECKING`` blocks aside),
    wherever in the file the import statement is."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found


def test_no_import_cycles():
    modules = module_names()
    graph = {name: runtime_imports(path, modules) - {name} for name, path in modules.items()}
    seen: dict[str, str] = {}  # "active" while on the path, then "done"

    def visit(name: str, path: list[str]) -> None:
        seen[name] = "active"
        for other in sorted(graph[name]):
            if seen.get(other) == "active":
                cycle = [*path[path.index(other) :], other]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if other not in seen:
                visit(other, [*path, other])
        seen[name] = "done"

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])


def test_every_registration_hook_has_a_kind_row():
    registering = {name for name in HOOKS if name.startswith("tlplug_register_")} - SETUP
    assert registering == REGISTRATION


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_each_kind_has_fields_flags_a_test_and_docs(kind):
    fields = attrs.fields_dict(Recipe)
    command = cli.commands[kind.command]
    flags = {flag for param in command.params for flag in param.opts}
    if kind.scope == "recipe":
        assert kind.field in fields and kind.options_field in fields
    if kind.scope == "data":
        assert kind.field not in fields and kind.options_field in fields
    if kind.scope == "command":
        assert kind.field not in fields and kind.options_field not in fields
    assert {kind.flag, kind.options_flag} <= flags, f"'tlplug {kind.command}' lacks its flags"
    assert f"def {kind.hook}(" in TESTS, f"no test plugin implements {kind.hook}"
    assert f"### `{kind.hook}`" in GUIDE, f"docs/plugins.md has no entry for {kind.hook}"
    # The guide shows how a user picks a strategy of the kind: its flag, in code quotes.
    assert f"`{kind.flag}" in GUIDE, f"docs/plugins.md never shows {kind.flag}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_hook_says_when_and_what_and_is_tested(name):
    doc = " ".join(inspect.getdoc(HOOKS[name]).split())
    if name in REGISTRATION:
        assert "register(name, " in doc, name
    else:
        assert "Called" in doc and "Return value ignored" in doc, name
    assert list(inspect.signature(HOOKS[name]).parameters)
    assert all(
        p.annotation is not p.empty for p in inspect.signature(HOOKS[name]).parameters.values()
    )
    assert f"def {name}(" in TESTS, f"no test plugin implements {name}"
    assert f"### `{name}`" in GUIDE


def test_lifecycle_hooks_are_the_documented_set():
    documented = set(re.findall(r"`(tlplug_\w+)\(run", GUIDE))
    assert documented >= LIFECYCLE


def test_the_hook_reference_matches_the_hook_specs():
    """docs/plugins.md's hook reference has a section for each hook of hookspecs.py and no
    other, and each section's Arguments name the hook's parameters as the spec declares."""
    documented = set(re.findall(r"^### `(tlplug_\w+)`", GUIDE, re.M))
    assert documented == set(HOOKS)
    for name, spec in HOOKS.items():
        section = GUIDE.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        arguments = re.search(r"\*\*Arguments:\*\*(.*?)(?=\n- \*\*|\Z)", section, re.S)
        assert arguments, f"the reference of {name} has no Arguments"
        for parameter in inspect.signature(spec).parameters:
            assert f"`{parameter}" in arguments.group(1), f"{name}: {parameter} not described"

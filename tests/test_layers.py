"""The README's flow as a contract: data → models → training → runs → results → workbook →
command line. import-linter checks the layers (pyproject.toml); this checks there is no cycle at
all, function-level imports included, and that what `make test` runs first would catch one."""

import subprocess
import sys
from pathlib import Path

import grimp

from mnist_lab import paths


def cycles(package: str = "mnist_lab") -> list[list[str]]:
    """Each group of modules that import each other round, directly or not (Tarjan's strongly
    connected components, written without recursion)."""
    graph = grimp.build_graph(package)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.find_modules_directly_imported_by(successor)))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle():
    assert cycles() == []


def test_the_cycle_finder_finds_one(tmp_path, monkeypatch):
    package = tmp_path / "roundabout"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b  # a function-level import counts too\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles("roundabout") == [["roundabout.a", "roundabout.b"]]


def test_the_layer_contract_holds_and_would_catch_an_upward_import(tmp_path):
    lint = Path(sys.executable).with_name("lint-imports")
    kept = subprocess.run([str(lint)], cwd=paths.ROOT, capture_output=True, text=True)
    assert kept.returncode == 0 and "1 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]
    # The same contract over a copy of the package in which the data layer imports the command line.
    copy = tmp_path / "checkout"
    (copy / "mnist_lab").mkdir(parents=True)
    for path in (paths.ROOT / "mnist_lab").rglob("*.py"):
        target = copy / path.relative_to(paths.ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / "mnist_lab" / "paths.py").write_text((copy / "mnist_lab" / "paths.py").read_text()
                                                + "\n\ndef upward():\n    from . import cli  # noqa: F401\n")
    (copy / "pyproject.toml").write_text((paths.ROOT / "pyproject.toml").read_text())
    broken = subprocess.run([str(lint)], cwd=copy, capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert broken.returncode == 1 and "mnist_lab.paths -> mnist_lab.cli" in broken.stdout, broken.stdout[-2000:]

"""Code identity that travels: the same hash of the same code under every interpreter, a named
scheme in every record, and records of the old scheme moved without retraining."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lab import codehash, fingerprint, paths

PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# Snippets whose `ast.dump` differs between interpreters, with their hashes under SCHEME as
# committed: a change here is a change of scheme, to be named and migrated, never an update.
GOLDEN = {
    "functions": ('def f(x, /, y=1, *a, k: int = 2, **kw) -> "str":\n    """doc"""\n    return x\n'
                  "class C(object, metaclass=type):\n    pass\n",
                  "d2bc83d1a33ed66914e1edfd2aee714da3ea63949e91a7442c26e2e9dcd64418"),
    "nested_format_spec": ('w = 5\ns = f"{x:<{w}}" + f"{x=}" + f"{x!r:>10}" + f"a{{b}}{y}c" + f\'{x:{w}.{y}f}\'\n',
                           "08bfe0b0e64a44f8a5e35977db600733327f1c7f34a6dacdeaef89409e617602"),
    "constants": ("x = (1e300, 0.1, 3j, 0xFFFFFFFFFFFFFFFFFFFFFFFFF, b'\\x00', u'u', ..., None, True)\n",
                  "e2349b76bb73f99eb2e2518e697c8324057c36ddae8cd0d56ff250ced640b876"),
    "docstring_only": ('"""A module with only a docstring."""\n',
                       "15ebbddb80aa60312ae7820636b227d0209d53de2a47116d53710dc529f94ede"),
}


def python(version: str) -> str | None:
    """The interpreter of that version: pyenv's (this machine kind has 3.10 to 3.13), else one on
    PATH that answers (a pyenv shim of a version not selected does not)."""
    root = Path.home() / ".pyenv" / "versions"
    candidates = sorted(root.glob(f"{version}.*/bin/python")) if root.is_dir() else []
    for candidate in [*map(str, reversed(candidates)), shutil.which(f"python{version}")]:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def package_files() -> list[str]:
    return sorted(str(p.relative_to(paths.ROOT)) for p in (paths.ROOT / "mnist_lab").rglob("*.py"))


@pytest.mark.parametrize("version", PYTHONS)
def test_every_interpreter_hashes_every_file_of_the_package_alike(version):
    interpreter = python(version)
    if interpreter is None:
        pytest.skip(f"Python {version} is not on this machine (PATH or ~/.pyenv/versions)")
    files = package_files()
    here = subprocess.run([sys.executable, "-m", "mnist_lab.codehash", *files], cwd=paths.ROOT,
                          capture_output=True, text=True, check=True).stdout
    there = subprocess.run([interpreter, "-m", "mnist_lab.codehash", *files], cwd=paths.ROOT,
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here
    assert len(here.splitlines()) == len(files) > 50


@pytest.mark.parametrize("version", PYTHONS)
def test_the_golden_snippets_hash_as_committed_under_every_interpreter(version, tmp_path):
    interpreter = python(version)
    if interpreter is None:
        pytest.skip(f"Python {version} is not on this machine (PATH or ~/.pyenv/versions)")
    for name, (source, _) in GOLDEN.items():
        (tmp_path / f"{name}.py").write_text(source)
    files = sorted(f"{name}.py" for name in GOLDEN)
    shown = subprocess.run([interpreter, "-I", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                            "from mnist_lab.codehash import main; sys.exit(main(sys.argv[1:]))", str(paths.ROOT), *files],
                           cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "".join(f"{GOLDEN[file[:-3]][1]}  {file}\n" for file in files)


def test_what_a_hash_ignores_and_what_it_sees():
    base = codehash.code_hash_of(b"def f(x):\n    return x + 1\n", ".py")
    assert codehash.code_hash_of(b'def f(x):\n    """Adds one."""\n    return x + 1  # why\n', ".py") == base
    assert codehash.code_hash_of(b"def f(x):\n    return x + 2\n", ".py") != base
    assert codehash.code_hash_of(b"def f(x):\n    return x + 1.0\n", ".py") != base  # 1 and 1.0 are other code
    assert codehash.code_hash_of(b"s = f'{a}' 'b'\n", ".py") == codehash.code_hash_of(b"s = f'{a}b'\n", ".py")
    not_python = b"def f(:\n"
    assert codehash.code_hash_of(not_python, ".py") == hashlib.sha256(not_python).hexdigest()
    assert codehash.code_hash_of(b"x = 1\n", ".json") == hashlib.sha256(b"x = 1\n").hexdigest()


def test_a_deeply_nested_expression_is_hashed_without_recursion():
    source = ("x = " + "(" * 150 + "1" + ")" * 150 + "\n").encode()  # parses; a recursive writer would be near its limit
    assert len(codehash.code_hash_of(source, ".py")) == 64


def test_the_command_prints_hash_and_file_and_fails_on_a_missing_one(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    done = subprocess.run([sys.executable, "-m", "mnist_lab.codehash", "a.py", "absent.py"], cwd=tmp_path,
                          env={"PYTHONPATH": str(paths.ROOT)}, capture_output=True, text=True)
    assert done.stdout == f"{codehash.code_hash_of(b'x = 1' + bytes([10]), '.py')}  a.py\n"
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "absent.py" in done.stderr


def test_the_codehash_module_imports_only_the_standard_library():
    imported = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                               "before = set(sys.modules); import mnist_lab.codehash; "
                               "print(sorted(m for m in set(sys.modules) - before if not m.startswith('mnist_lab')))",
                               str(paths.ROOT)], capture_output=True, text=True, check=True).stdout
    assert "torch" not in imported and "numpy" not in imported
    third_party = [m for m in eval(imported) if m.split(".")[0] not in sys.stdlib_module_names]
    assert third_party == []


# ---- what a key holds -------------------------------------------------------------------------


def test_a_key_names_its_scheme_and_holds_torchs_release_but_not_the_interpreter_or_host():
    value = {"recipe": {"model": "cnn"}, "seed": 0, "torch": "2.14.1"}
    record = fingerprint.run_record(value)
    assert record["code_scheme"] == codehash.SCHEME
    text = json.dumps(record)
    assert sys.version.split()[0] not in text and str(paths.ROOT) not in text
    import platform
    assert platform.node() not in text
    other_torch = fingerprint.run_record({**value, "torch": "2.11.0"})
    assert other_torch["fingerprint"] != record["fingerprint"]  # another release computes other numbers
    assert fingerprint.differences(record, other_torch) == ["torch (2.14.1 vs 2.11.0)"]


def test_the_spec_records_torchs_release_without_its_build_label():
    import torch

    from mnist_lab.experiments import get_experiment
    from mnist_lab.spec import RunSpec

    spec = RunSpec.of(get_experiment("cnn"), device="cpu")
    assert spec.value()["torch"] == torch.__version__.split("+")[0]
    assert "+" not in spec.value()["torch"]


def test_a_record_of_another_scheme_gives_one_reason_not_every_file():
    now = fingerprint.run_record({"recipe": {"model": "vit"}, "seed": 0})
    then = {**now, "code": {path: "0" * 64 for path in now["code"]}, "fingerprint": "f" * 64}
    del then["code_scheme"]
    assert fingerprint.differences(then, now, hashed_by="3.12.3") == [
        "hashed under code-hash scheme ast-dump/1 (Python 3.12.3)"]
    same_scheme = {**then, "code_scheme": codehash.SCHEME}
    assert len(fingerprint.differences(same_scheme, now)) == len(now["code"]) > 5


def test_the_package_digest_is_the_same_under_every_interpreter_found():
    here = subprocess.run([sys.executable, "-m", "mnist_lab.codehash", "--package"], cwd=paths.ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert here.startswith(codehash.package_digest(paths.ROOT)[0]) and codehash.SCHEME in here
    found = [python(version) for version in PYTHONS]
    for interpreter in filter(None, found):
        there = subprocess.run([interpreter, "-m", "mnist_lab.codehash", "--package"], cwd=paths.ROOT,
                               env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
        assert there.stdout == here, interpreter

"""Provenance: what each artifact was made from, and whether it still matches its inputs.

The one place that says what an artifact depends on; the training cache, `mnist-lab status`,
`mnist-lab run` and the report's stale check all ask it.

* A training run's *record* (its provenance.json): the recipe, seed and settings, the hash
  of every file of the training code, and the data. Its fingerprint is the hash of that
  record; a cached run is reused only while a fresh record has the same fingerprint, so
  changing a plot never retrains a model and changing a hyperparameter retrains exactly
  that model. The training code is derived from the package, not listed by hand: the
  modules `train.py` imports, transitively, and every file of a subpackage among them, less
  `experiments.py`, whose whole effect on a run, the recipe, is in the record field by field
  (were the file training code, editing one recipe would retrain every model).
* A notebook's *record* (artifacts/<profile>/provenance/<notebook>.json), written when a
  run of the notebook is committed: its parameters, the hash of its code cells, of each
  package file it imported and of every artifact it wrote, the fingerprints of the training
  runs it used, the data, the environment, the git commit and the wall time. `staleness`
  compares a record with the present, recomputing what the runs it used depend on, and
  says what changed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from pathlib import Path

from .. import paths
from ..data import MD5
from ..errors import LabError

TRAINING_ENTRY = "mnist_lab.train"  # what trains; everything it imports is training code,
RECORDED_AS_INPUTS = {"mnist_lab.experiments"}  # except what a run's record holds as data


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: Path) -> str:
    return str(path.relative_to(paths.ROOT))


# ---- what training depends on -------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    base = paths.ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """The mnist_lab modules a source file imports, anywhere in it (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return {name for name in found if name.split(".")[0] == "mnist_lab" and _module_file(name)}


def training_sources() -> list[Path]:
    """Every file of the package that training reads: the closure of `train.py`'s imports, and
    each subpackage among them whole (whatever its files' types), so nothing is kept by hand."""
    seen, queue = set(), [TRAINING_ENTRY]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        parent = module.rpartition(".")[0]
        if parent and parent != "mnist_lab":
            queue.append(parent)  # importing a.b.c runs a/b/__init__.py
        queue.extend(_imports(_module_file(module), module) - seen)
    files = set()
    for module in seen - RECORDED_AS_INPUTS:
        path = _module_file(module)
        if path.name == "__init__.py" and module != "mnist_lab":
            files.update(p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.add(path)
    return sorted(files)


def code_hashes() -> dict[str, str]:
    return {_relative(path): file_hash(path) for path in training_sources()}


def run_record(**inputs) -> dict:
    """What a training run depends on: the inputs given (recipe, seed, subset, device, ...),
    the training code and the data; with its fingerprint, the hash of the rest."""
    record = {"inputs": json.loads(json.dumps(inputs, sort_keys=True, default=str)), "code": code_hashes(),
              "data": MD5}
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def read_run_record(run_directory: Path) -> dict | None:
    path = Path(run_directory) / "provenance.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if "fingerprint" in record and "inputs" in record else None


def run_staleness(run_directory: Path, fingerprint: str | None = None) -> list[str]:
    """Why the run in `run_directory` would be trained again now (empty: it is still valid).

    With `fingerprint`, the run must also be the one of that fingerprint (the one a notebook used).
    """
    name = _relative_to_profile(run_directory)
    record = read_run_record(run_directory)
    if record is None:
        return [f"{name} is missing"]
    if fingerprint is not None and record["fingerprint"] != fingerprint:
        return [f"{name} was retrained"]
    now = run_record(**record["inputs"])
    if now["fingerprint"] == record["fingerprint"]:
        return []
    changed = sorted(path for path in {*record["code"], *now["code"]}
                     if record["code"].get(path) != now["code"].get(path))
    reasons = [f"{path} changed (training code of {name})" for path in changed]
    if now["data"] != record["data"]:
        reasons.append(f"MNIST data changed ({name})")
    return reasons or [f"{name}'s inputs changed"]


def _relative_to_profile(run_directory: Path) -> str:
    parts = Path(run_directory).parts
    return "/".join(parts[parts.index("runs"):]) if "runs" in parts else str(run_directory)


# ---- notebooks --------------------------------------------------------------------------------


def read_notebook(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:
        raise LabError(f"{path} is not a valid notebook (not JSON: {error})") from None


def notebook_code_hash(path: str | Path) -> str:
    """Hash of a notebook's code cells only: outputs, metadata and prose do not change results."""
    cells = read_notebook(path).get("cells", [])
    code = ["".join(cell["source"]) for cell in cells if cell.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def data_hashes(root: Path | None = None) -> dict[str, str]:
    """Hash of each MNIST file the loader would read (by content: touching a file changes nothing)."""
    from ..data import default_root, find_file

    root = root or default_root()
    found = {name: find_file(root, name) for name in MD5}
    return {name: file_hash(path) if path else "missing" for name, path in found.items()}


def git_state() -> dict:
    """The commit of the work tree and whether it had uncommitted changes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def record_path(profile: str, notebook: str) -> Path:
    return paths.profile_dir(profile) / "provenance" / f"{notebook}.json"


def read_record(profile: str, notebook: str) -> dict | None:
    """The notebook's last provenance record, or None if it never ran through the runner."""
    path = record_path(profile, notebook)
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None  # a record cut short by hand: as if never run


def staleness(record: dict | None, *, notebook_file: Path, parameters: dict, profile_dir: Path) -> list[str]:
    """Why a notebook's artifacts no longer match their inputs; an empty list means fresh."""
    if record is None:
        return ["never run (no provenance record)"]
    reasons = []
    if notebook_code_hash(notebook_file) != record["notebook_hash"]:
        reasons.append(f"{notebook_file.name}'s code changed")
    for relative, digest in record["sources"].items():
        path = paths.ROOT / relative
        if not path.exists():
            reasons.append(f"{relative} was removed")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} changed")
    if data_hashes() != record["data"]:
        changed = [name for name, digest in data_hashes().items() if record["data"].get(name) != digest]
        reasons.append(f"MNIST data changed ({', '.join(changed)})")
    for key, value in parameters.items():
        if record["parameters"].get(key) != value:
            reasons.append(f"parameter {key} changed ({record['parameters'].get(key)!r} -> {value!r})")
    for relative, fingerprint in record["runs"].items():
        reasons += [reason for reason in run_staleness(profile_dir / relative, fingerprint) if reason not in reasons]
    for relative, digest in record["outputs"].items():
        path = profile_dir / relative
        if not path.exists():
            reasons.append(f"{relative} is missing")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} was modified after the run")
    return reasons

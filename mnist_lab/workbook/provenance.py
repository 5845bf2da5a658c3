"""Provenance of the notebooks' artifacts: what each was made from, and whether it still matches.

A training run's record and key are the run cache's (`fingerprint`, `runs.cache`); this module
says what a notebook's outputs depend on, for `mnist-lab status`, `mnist-lab run` and the
report's stale check.

* A notebook's *record* (artifacts/<profile>/provenance/<notebook>.json), written when a
  run of the notebook is committed: its parameters, the hash of its code cells, of each
  package file it imported and of every artifact it wrote, the fingerprints of the training
  runs it used, the data, the environment, the git commit and the wall time. `staleness`
  compares a record with the present, recomputing what the runs it used depend on, and
  says what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import paths, records
from ..errors import LabError
from ..data import MD5
from ..fingerprint import SCHEME as CODE_SCHEME
from ..fingerprint import code_hash, file_hash, git_state, scheme_of

__all__ = ["CODE_SCHEME", "code_hash", "data_hashes", "file_hash", "git_state", "notebook_code_hash",
           "read_notebook", "read_record", "record_path", "staleness"]

# ---- notebooks --------------------------------------------------------------------------------


def read_notebook(path: str | Path) -> dict:
    """The notebook, checked against Jupyter's own schema (nbformat): a file that is JSON but
    not a notebook (`[]`, cells that are not a list, a cell without source) is one clear line."""
    import nbformat

    try:
        notebook = nbformat.reads(Path(path).read_text(), as_version=4)
        nbformat.validate(notebook)
    except ValueError as error:
        raise LabError(f"{path} is not a valid notebook (not JSON: {error})") from None
    except (nbformat.ValidationError, AttributeError, KeyError, TypeError) as error:
        message = getattr(error, "message", None) or str(error)
        raise LabError(f"{path} is not a valid notebook ({message.splitlines()[0][:200]})") from None
    return notebook


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


def record_path(profile: str, notebook: str) -> Path:
    return paths.profile_dir(profile) / "provenance" / f"{notebook}.json"


def read_record(profile: str, notebook: str) -> dict | None:
    """The notebook's last provenance record, or None if it never ran through the runner or the
    record is unusable (cut short, hand-edited, another shape: `records.NOTEBOOK_RECORD`): as if never run."""
    return records.load(record_path(profile, notebook), records.NOTEBOOK_RECORD)


def _recorded_paths(root: Path, entries: dict, what: str, reasons: list[str]):
    """Each recorded (relative, value) with its path under `root`; a path that escapes is a reason, not a read."""
    for relative, value in entries.items():
        try:
            yield relative, value, paths.inside(root, relative, what)
        except LabError as error:
            reasons.append(str(error))


def staleness(record: dict | None, *, notebook_file: Path, parameters: dict, profile_dir: Path) -> list[str]:
    """Why a notebook's artifacts no longer match their inputs; an empty list means fresh."""
    from ..runs.cache import staleness as run_staleness
    from ..runs.directory import read_run_record

    if record is None:
        return ["never run (no provenance record)"]
    reasons = []
    if notebook_code_hash(notebook_file) != record["notebook_hash"]:
        reasons.append(f"{notebook_file.name}'s code changed")
    if scheme_of(record) != CODE_SCHEME:  # its hashes are not comparable with today's, file by file
        python = (record.get("environment") or {}).get("python") if isinstance(record.get("environment"), dict) else None
        reasons.append(f"its sources were hashed under code-hash scheme {scheme_of(record)}"
                       + (f" (Python {python})" if isinstance(python, str) and python.isprintable() else ""))
    else:
        for relative, digest, path in _recorded_paths(paths.ROOT, record["sources"], "source", reasons):
            if not path.exists():
                reasons.append(f"{relative} was removed")
            elif not path.is_file():  # hashing a folder would fail with a bare "[Errno 21]", naming no record
                reasons.append(f"{relative}, a source its provenance record names, is not a file")
            elif code_hash(path) != digest:
                reasons.append(f"{relative} changed")
    data_now = data_hashes()
    if data_now != record["data"]:
        changed = [name for name, digest in data_now.items() if record["data"].get(name) != digest]
        reasons.append(f"MNIST data changed ({', '.join(changed)})")
    for key, value in parameters.items():
        if record["parameters"].get(key) != value:
            reasons.append(f"parameter {key} changed ({record['parameters'].get(key)!r} → {value!r})")
    for relative, fingerprint, run_directory in _recorded_paths(profile_dir, record["runs"], "run", reasons):
        found = run_staleness(run_directory, fingerprint, name=relative)
        reasons += [reason for reason in found if reason not in reasons]
    # Frozen runs are used as they are; only a refreeze (or removal) makes the notebook stale.
    for relative, key, frozen_path in _recorded_paths(paths.FROZEN, record.get("frozen", {}), "frozen run", reasons):
        frozen = read_run_record(frozen_path)
        if frozen is None or frozen["fingerprint"] != key:
            reasons.append(f"frozen/{relative} was frozen again or removed")
    for relative, digest, path in _recorded_paths(profile_dir, record["outputs"], "output", reasons):
        if not path.is_file():
            reasons.append(f"{relative} is missing")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} was modified after the run")
    return reasons

"""Moving run records to the current code-hash scheme without retraining: `mnist-lab rekey`.

A run's key hashes the code it executed, and records written before code-hash schemes had names
(`codehash.LEGACY_SCHEME`) hashed `ast.dump` text, which differs between interpreters. The code
those runs executed is still in git, at the commit each record names. So for each record:

1. read every code file it lists from its commit (`git cat-file`, the commit checked as 40 hex
   digits);
2. hash each under the legacy scheme, and go on only if every hash is the one the record holds:
   then the files are the very code the run executed;
3. hash the same files under the current scheme, add the torch release its environment.json
   recorded (a run's value holds it since the current scheme), and compute the key again.

The run's results are not touched: the folder is renamed to the new key, the key rewritten where
the record and config.json hold it (and config.json's hash in the record with it), and the index
follows. A record that does not verify is left exactly as it was, and named. The legacy hashes
are the `ast.dump` of Python 3.10 and 3.11 (the CPU machines' interpreters), so this runs there.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import records
from ..codehash import LEGACY_SCHEME, SCHEME, code_hash_of
from ..errors import LabError
from ..files import atomic_dir, write_json
from ..fingerprint import file_hash, key_of, keyed, scheme_of
from .cache import KEY_LENGTH
from .directory import read_run_record
from .frozen import commit_files

# `ast.dump` reads the same under these interpreters and differs under 3.12 and 3.13 (type_params,
# empty fields, f-string pieces), so the legacy hashes can be checked only here.
LEGACY_PYTHONS = ((3, 10), (3, 11))


def legacy_code_hash_of(content: bytes, suffix: str) -> str:
    """A file's hash under the legacy scheme, exactly as records before schemes had names hold it."""
    if suffix != ".py":
        return hashlib.sha256(content).hexdigest()
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError):
        return hashlib.sha256(content).hexdigest()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@dataclass
class Rekeyed:
    moved: dict[str, str] = field(default_factory=dict)  # old key → new key
    current: list[str] = field(default_factory=list)  # keys already under the current scheme
    refused: dict[str, str] = field(default_factory=dict)  # folder → why it stays as it was


def migrated_record(record: dict, environment: dict) -> dict:
    """The record of the same run under the current scheme; LabError where its code does not verify."""
    if scheme_of(record) != LEGACY_SCHEME:
        raise LabError(f"hashed under code-hash scheme {scheme_of(record)}, which has no migration")
    if key_of(record) != record["fingerprint"]:
        raise LabError("its key is not the hash of what it records")
    commit = (record.get("git") or {}).get("commit")
    committed = commit_files(commit, sorted(record["code"]))
    code = {}
    for path, digest in sorted(record["code"].items()):
        content = committed[path]
        if content is None:
            raise LabError(f"{path} is not in commit {commit[:7]}")
        if legacy_code_hash_of(content, Path(path).suffix) != digest:
            raise LabError(f"{path} in commit {commit[:7]} is not the code the run hashed")
        code[path] = code_hash_of(content, Path(path).suffix)
    torch = environment.get("torch")
    if not isinstance(torch, str) or not torch or len(torch) > 64:
        raise LabError("its environment.json names no torch version")
    inputs = {**record["inputs"], "torch": torch.split("+")[0]}
    return {**record, **keyed(inputs, code, record["data"])}


def rekey_folder(folder: Path, index_name: str = "index.json") -> Rekeyed:
    """Move every legacy record in `folder` (one run per `<key[:16]>/`, names in `index_name`) to
    the current scheme, as a whole: the folder is replaced at once, or left as it was."""
    result = Rekeyed()
    plan: dict[Path, tuple[dict, dict]] = {}  # run folder → (its new record, its new config)
    for directory in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.is_symlink()):
        record = read_run_record(directory)
        if record is None:
            continue
        if scheme_of(record) == SCHEME:
            result.current.append(record["fingerprint"])
            continue
        if sys.version_info[:2] not in LEGACY_PYTHONS:
            raise LabError(f"records hashed under {LEGACY_SCHEME} are checked with the ast.dump of Python 3.10 or "
                           f"3.11, and this is {sys.version_info[0]}.{sys.version_info[1]}; run `mnist-lab rekey` there")
        try:
            environment = records.read(directory / "environment.json", records.RUN_ENVIRONMENT)
            config = records.read(directory / "config.json", records.RUN_CONFIG)
            if (record.get("files") or {}).get("config.json") != file_hash(directory / "config.json"):
                raise LabError("its config.json is not the one its record vouches for")
            new = migrated_record(record, environment)
        except (OSError, LabError) as error:
            result.refused[directory.name] = str(error)
            continue
        plan[directory] = (new, {**config, "fingerprint": new["fingerprint"]} if "fingerprint" in config else config)
        result.moved[record["fingerprint"]] = new["fingerprint"]
    if not result.moved:
        return result
    with atomic_dir(Path(folder)) as staging:
        for entry in sorted(Path(folder).iterdir()):
            moved = plan.get(entry)
            target = staging / (moved[0]["fingerprint"][:KEY_LENGTH] if moved else entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True)
            elif entry.is_file() and not entry.is_symlink() and entry.name != index_name:
                shutil.copyfile(entry, target)
            if moved:
                record, config = moved
                write_json(target / "config.json", config)
                write_json(target / "provenance.json",
                           {**record, "files": {**record["files"], "config.json": file_hash(target / "config.json")}})
        index = records.load(Path(folder) / index_name, records.RUN_INDEX)
        if index is None and (Path(folder) / index_name).is_file():
            shutil.copyfile(Path(folder) / index_name, staging / index_name)  # not ours to mend: kept as it was
        elif index is not None:
            write_json(staging / index_name, {name: {seed: result.moved.get(key, key) for seed, key in seeds.items()}
                                              for name, seeds in index.items()})
    return result


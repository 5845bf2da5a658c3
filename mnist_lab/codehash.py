"""What a source file does, hashed the same way by every Python: the code identity of run keys.

    python -m mnist_lab.codehash mnist_lab/train.py mnist_lab/models/vit.py
    3f1c…  mnist_lab/train.py

A Python file is hashed as a canonical form of its syntax tree, written by this module rather
than by `ast.dump`, whose text changes between interpreters (3.12 adds `type_params=[]` to every
function and class, 3.13 leaves empty fields out, 3.12 parses a nested f-string format spec with
one more empty string). The form:

* docstrings dropped (the parser already drops comments), so rewording one retrains nothing;
* each node as its type name and its fields in sorted order; a field that is None or an empty
  list is left out, so a field one interpreter lacks and another leaves empty read the same;
* an f-string's literal pieces joined and the empty ones dropped;
* constants tagged by type, floats as `float.hex` and integers in hexadecimal (exact, and free
  of the decimal-digit limit of `int.__str__`), strings and names as JSON strings.

Any other file, and Python that does not parse, is hashed byte for byte.

The scheme has a name (`SCHEME`) that every record holding code hashes stores beside them:
a record hashed under another scheme is compared with nothing and says so, and `frozen/` moves
to a new scheme by re-hashing its commit's files (`mnist-lab rekey`), never by retraining.

This module imports only the standard library, so any interpreter can run it on a checkout.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path

SCHEME = "canonical-ast/2"
# Records written before schemes were named hashed `ast.dump` of the interpreter they ran on.
LEGACY_SCHEME = "ast-dump/1"


def code_hash_of(content: bytes, suffix: str) -> str:
    """The hash of a file's content (a version of it in git, say), given its suffix."""
    if suffix == ".py":
        try:
            tree = ast.parse(content)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            return hashlib.sha256(canonical_form(tree).encode("ascii")).hexdigest()
    return hashlib.sha256(content).hexdigest()


def code_hash(path: str | Path) -> str:
    path = Path(path)
    return code_hash_of(path.read_bytes(), path.suffix)


def canonical_form(tree: ast.AST) -> str:
    """The tree as one line of ASCII JSON that is the same text on every Python from 3.10 on.

    Written without recursion: a deeply nested expression that parses must not overflow here
    on one interpreter and not on another."""
    out: list[str] = []
    stack: list = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, ast.AST):
            fields = [(name, value) for name, value in sorted(_fields(item)) if value is not None and value != []]
            parts: list = [_Literal(f'["{type(item).__name__}"')]
            for name, value in fields:
                parts += [_Literal(f',["{name}",'), value, _Literal("]")]
            parts.append(_Literal("]"))
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            parts = [_Literal("[")]
            for index, value in enumerate(item):
                parts += ([_Literal(",")] if index else []) + [value]
            parts.append(_Literal("]"))
            stack.extend(reversed(parts))
        else:
            out.append(_constant(item))
    return "".join(out)


class _Literal(str):
    """Text already in canonical form (told apart from a string constant of the tree)."""

    @property
    def text(self) -> str:
        return str(self)


def _fields(node: ast.AST):
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(node, ast.JoinedStr) and name == "values":
            value = _joined_pieces(value)
        elif name == "body" and isinstance(node, _DOCUMENTED):
            value = _without_docstring(value)
        yield name, value


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _without_docstring(body: list) -> list:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:] or [ast.Pass()]
    return body


def _joined_pieces(values: list) -> list:
    """An f-string's parts with adjacent literal pieces joined and empty ones dropped: 3.12's
    parser splits and pads them where 3.10's gives one piece."""
    pieces: list = []
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if not value.value:
                continue
            if pieces and isinstance(pieces[-1], ast.Constant) and isinstance(pieces[-1].value, str):
                pieces[-1] = ast.Constant(value=pieces[-1].value + value.value)
                continue
            value = ast.Constant(value=value.value)  # without `kind`, as a joined piece has none
        pieces.append(value)
    return pieces


def _constant(value) -> str:
    if isinstance(value, bool) or value is None or value is Ellipsis:
        return json.dumps(["const", repr(value)])  # True, False, None, Ellipsis: fixed words
    if isinstance(value, int):
        return json.dumps(["int", hex(value)])
    if isinstance(value, float):
        return json.dumps(["float", value.hex()])
    if isinstance(value, complex):
        return json.dumps(["complex", value.real.hex(), value.imag.hex()])
    if isinstance(value, bytes):
        return json.dumps(["bytes", value.hex()])
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"no canonical form for a {type(value).__name__} in a syntax tree")


def package_digest(root: str | Path) -> tuple[str, int]:
    """One hash of every Python file of the package under `root` (its `HASH  FILE` lines, in path
    order), and how many: two machines that print the same have the same code, whatever Python."""
    files = sorted(p.relative_to(root).as_posix() for p in Path(root, "mnist_lab").rglob("*.py")
                   if "__pycache__" not in p.parts)
    lines = "".join(f"{code_hash(Path(root, name))}  {name}\n" for name in files)
    return hashlib.sha256(lines.encode()).hexdigest(), len(files)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m mnist_lab.codehash FILE...   prints `HASH  FILE` for each, under scheme " + SCHEME
              + "\n       python -m mnist_lab.codehash --package   one hash of the whole package of this checkout")
        return 0 if argv else 2
    if argv == ["--package"]:
        digest, count = package_digest(Path(__file__).resolve().parent.parent)
        print(f"{digest}  mnist_lab ({count} files, code-hash scheme {SCHEME})")
        return 0
    status = 0
    for name in argv:
        try:
            print(f"{code_hash(name)}  {name}")
        except OSError as error:
            print(f"codehash: cannot read {name!r}: {error.strerror}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What a run reads from disk, as part of its identity in the store.

A run is keyed by the hash of its resolved config, and a configuration already in the store is
skipped. The config names its files by path only: a checkpoint, an npz, an image folder. Without
their content in the key, retraining a model into the same path (``fragility-train`` writes
``results/train/<run>/model.pt``) or adding images to a folder would be answered with the numbers
of the old file, as "already in the store". :func:`with_inputs` adds an ``inputs`` entry to the
resolved config, ``{"model.checkpoint": <sha256>, "dataset.path": <sha256>, ...}`` (every key of
:data:`PATH_KEYS` in the model, dataset, defense and attack nodes, nested ones included), before
it is hashed and stored, so the stored config also says which bytes the run read.

- A file: the SHA-256 of its bytes (``models.checkpoint.file_sha256``, cached per process by path,
  inode, size and change times, so the model loader's own hash of the checkpoint costs nothing more).
- A folder (``dataset=imagefolder``): the SHA-256 of its listing, the relative path and byte size
  of every file under it. That notices images added, removed, renamed or re-encoded without reading
  every byte of a large folder on every run. An image rewritten in place at exactly the same size
  is not noticed (``force=true`` reruns). Modification times are left out on purpose: a copied
  folder keeps its key, so stores from two machines still merge. The listing costs one ``stat`` per
  file and reads no image.
- Not digested: a path that does not exist (the part reports that, in one line, when it loads),
  and the dataset root of ``download=true``, where torchvision checks the files' MD5 sums
  against the published ones itself.

A config without input files (the embedded digits demo) gets no ``inputs`` entry, so its hash is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fragility.models.checkpoint import file_sha256

#: the config groups whose nodes (nested ones included: a patch's ``train_dataset``, a feature
#: network) may name files a part reads
GROUPS = ("model", "dataset", "defense", "attack")
#: keys that name a file or folder a part reads (``save`` and other outputs are not inputs)
PATH_KEYS = frozenset({"checkpoint", "path", "root", "train_path", "load", "cue_conflict"})


def folder_digest(root: Path) -> str:
    """SHA-256 of the listing of ``root``: every file's path relative to it and its size, sorted."""
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            try:
                entries.append((p.relative_to(root).as_posix(), p.stat().st_size))
            except OSError:  # a dangling link: the dataset will say so when it reads the folder
                continue
    for rel, size in sorted(entries):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


def input_digests(resolved: dict[str, Any]) -> dict[str, str]:
    """``{"<dotted key>": digest}`` for every existing input file or folder the config names."""
    out: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}.{i}")
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                walk(value, f"{where}.{key}")
            elif key in PATH_KEYS and isinstance(value, str) and value and not (key == "root" and node.get("download")):
                digest = _digest(Path(value).expanduser())
                if digest:
                    out[f"{where}.{key}"] = digest

    for group in GROUPS:
        walk(resolved.get(group), group)
    return out


def _digest(path: Path) -> str:
    try:
        if path.is_file():
            return file_sha256(path)
        if path.is_dir():
            return folder_digest(path)
    except OSError:  # unreadable: the part's own loader gives the one-line error
        pass
    return ""


def with_inputs(resolved: dict[str, Any]) -> dict[str, Any]:
    """``resolved`` with its ``inputs`` entry (:func:`input_digests`); unchanged when it has none."""
    digests = input_digests(resolved)
    return {**resolved, "inputs": digests} if digests else resolved


def data_digest(config_json: str) -> str:
    """Which data a stored run read: the digest of its ``dataset.*`` inputs (the one digest itself
    when there is one), "" when its config records none (the digits demo, a store from before)."""
    try:
        inputs = json.loads(config_json or "{}").get("inputs") or {}
    except (json.JSONDecodeError, AttributeError):
        return ""
    data = (
        {k: v for k, v in inputs.items() if isinstance(k, str) and k.startswith("dataset.")} if isinstance(inputs, dict) else {}
    )
    if len(data) <= 1:
        return str(next(iter(data.values()), ""))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

"""Staging prepared data from a shared URI to each node's local disk (FFCV reads local files).

`--data-uri URI` names the remote counterpart of `--root`: `URI/ffcv/<dataset>/` holds the
manifest and the .beton files that `rrdist data prepare` wrote. Each node copies them once into
its local `--root`, checks every file's size and SHA-256 against the manifest, reuses a valid
copy, and fetches a damaged one again. Any URI pyarrow or fsspec opens works: file://, s3://, gs://, hdfs://, ...
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from rrdist import atomic
from rrdist.data.beton import beton_dir, sha256
from rrdist.errors import DataError
from rrdist.storage import open_uri


def _remote(uri: str, dataset: str):
    fs, base = open_uri(uri, "--data-uri")
    return fs, f"{base}/ffcv/{dataset}"


def remote_manifest(uri: str, dataset: str) -> dict[str, Any]:
    fs, folder = _remote(uri, dataset)
    try:
        with fs.open_input_stream(f"{folder}/manifest.json") as f:
            return json.loads(f.read().decode())
    except (OSError, FileNotFoundError, json.JSONDecodeError) as e:
        raise DataError(f"no prepared {dataset} data at {uri}/ffcv/{dataset} ({type(e).__name__}): run "
                        f"`rrdist data prepare {dataset}` and copy ROOT/ffcv/{dataset} there") from None


def _valid(path: Path, entry: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256(path) == entry["sha256"]


def stage(uri: str, dataset: str, local_root: str | os.PathLike, log=print) -> dict[str, Any]:
    """Make `local_root/ffcv/<dataset>` a verified copy of the URI's; returns the local manifest."""
    fs, folder = _remote(uri, dataset)
    manifest = remote_manifest(uri, dataset)
    local = beton_dir(dataset, local_root)
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".staging.lock", "w") as lock:  # workers on one node copy once, in turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        for split, entry in manifest["splits"].items():
            target = local / entry["file"]
            if _valid(target, entry):
                continue
            log(f"staging {uri}/ffcv/{dataset}/{entry['file']} -> {target}")
            with atomic.atomic_path(target) as tmp:
                with fs.open_input_stream(f"{folder}/{entry['file']}") as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 22):
                        dst.write(block)
                if not _valid(tmp, entry):
                    raise DataError(f"the copy of {uri}/ffcv/{dataset}/{entry['file']} does not match its "
                                    f"manifest (size or SHA-256): check the files at {uri}")
        atomic.write_json(local / "manifest.json", {k: v for k, v in manifest.items() if k != "dir"})
    return {**manifest, "dir": str(local)}

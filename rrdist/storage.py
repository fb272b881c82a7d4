"""Run folders on a local or shared path, or at a bucket URI (s3://, gs://, any pyarrow/fsspec URI).

A run folder holds config.yaml, metrics.jsonl, tb/, backbone.pt, eval/ and Ray Train's
checkpoints (train/epoch_NNNN/). On a path, everything is read and written in place (atomically).
At a URI, Ray Train writes the checkpoints through the URI's filesystem; the files rrdist writes
itself are made in a working copy on local disk (`RunFolder.local`; TensorBoard and torch need
local files) and copied to the URI with `push`. An object store's upload is all-or-nothing, so a
reader never sees half a file there either.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rrdist import atomic
from rrdist.errors import ConfigError, DataError, first_line

CONFIG_FILE = "config.yaml"  # a run's settings, saved flat (rrdist.config.PretrainConfig.to_yaml)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | os.PathLike) -> bool:
    return bool(_SCHEME.match(str(location)))


def open_uri(uri: str, option: str):
    """(pyarrow filesystem, path inside it) of a URI: pyarrow's own schemes, else any fsspec protocol."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri.rstrip("/"))
    except Exception as pyarrow_error:
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri.rstrip("/"))
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
        except Exception:
            raise DataError(f"cannot open {option} {shown(uri)} ({first_line(pyarrow_error, 150)}): give a path or a "
                            f"URI such as s3://bucket/runs/name or gs://bucket/runs/name") from None


def shown(uri: str, query: bool = True) -> str:
    """A URI as printed: without credentials written into it (s3://KEY:SECRET@bucket/...), and
    without its query (an endpoint) where a folder is named for other tools (tensorboard --logdir)."""
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)
    return uri if query else uri.split("?")[0]


def join(location: str | os.PathLike, *parts: str) -> str:
    """A folder inside a path or a URI (a URI's query, such as an endpoint, stays at its end)."""
    location = str(location)
    if not is_uri(location):
        return str(Path(location).expanduser().resolve().joinpath(*parts))
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def cache_root() -> Path:
    return Path(os.environ.get("RRDIST_CACHE", Path.home() / ".cache" / "rrdist")).expanduser()


class RunFolder:
    """One run's folder: `location` is a path or a URI; `local` is where this process reads and writes files."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.remote = is_uri(self.location)
        if self.remote:
            self.fs, self.path = open_uri(self.location, "--out")
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.path.rstrip("/").split("/")[-1])[:40]
            digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
            self.local = cache_root() / "runs" / f"{slug}-{digest}"
        else:
            import pyarrow.fs as pafs

            self.local = Path(self.location).expanduser().resolve()
            self.fs, self.path = pafs.LocalFileSystem(), str(self.local)

    def __str__(self) -> str:
        return shown(self.location) if self.remote else str(self.local)

    @property
    def name(self) -> str:
        """The folder's own name (a sweep's trial name)."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def ray_storage(self) -> dict:
        """RunConfig arguments that put Ray Train's checkpoints in this folder."""
        return {"storage_path": self.path, **({"storage_filesystem": self.fs} if self.remote else {})}

    # -- single files, read and written where the run lives
    def read_bytes(self, name: str) -> bytes | None:
        if not self.remote:
            path = self.local / name
            return path.read_bytes() if path.is_file() else None
        try:
            if not self._exists(name):
                return None
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read()
        except OSError as e:
            raise DataError(f"cannot read {name} of the run at {self} ({first_line(e, 150)}): "
                            f"check the URI and your credentials for it") from None

    def read_text(self, name: str) -> str | None:
        data = self.read_bytes(name)
        return None if data is None else data.decode()

    def write_text(self, name: str, text: str) -> None:
        if not self.remote:
            atomic.write_text(self.local / name, text)
            return
        self._upload_bytes(text.encode(), name)

    def delete(self, name: str) -> None:
        if not self.remote:
            (self.local / name).unlink(missing_ok=True)
            return
        try:
            if self._exists(name):
                self.fs.delete_file(f"{self.path}/{name}")
        except OSError as e:
            raise DataError(f"cannot delete {name} of the run at {self} ({first_line(e, 150)}): "
                            f"check your credentials for it") from None

    def _exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.path}/{name}").type != pafs.FileType.NotFound

    def subfolders(self, name: str) -> list[str]:
        """Names of the folders inside `name` (e.g. the checkpoints under train/)."""
        return self._names(name, folders=True)

    def files(self, name: str = "") -> list[str]:
        """Names of the files inside `name` (the folder itself by default)."""
        return self._names(name, folders=False)

    def _names(self, name: str, folders: bool) -> list[str]:
        import pyarrow.fs as pafs

        kind = pafs.FileType.Directory if folders else pafs.FileType.File
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.path}/{name}".rstrip("/"), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == kind)

    def replace_folder(self, name: str) -> None:
        """Put the working copy's folder `name` at the URI in place of what was there."""
        if not self.remote:
            return
        try:
            self.fs.delete_dir_contents(f"{self.path}/{name}", missing_dir_ok=True)
        except OSError as e:
            raise DataError(f"cannot replace {name} of {self} ({first_line(e, 150)}): check your credentials "
                            f"for it") from None
        self.push(name)

    # -- the working copy of a run at a URI
    def push(self, *names: str) -> None:
        """Copy these files or folders (all their files) of the working copy to the URI."""
        if not self.remote:
            return
        for name in names:
            source = self.local / name
            files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
            for path in files:
                self._upload_bytes(path.read_bytes(), path.relative_to(self.local).as_posix())

    def pull(self, *names: str) -> None:
        """Make these files of the working copy what they are at the URI (absent if absent there)."""
        if not self.remote:
            return
        for name in names:
            data, target = self.read_bytes(name), self.local / name
            if data is None:
                target.unlink(missing_ok=True)
                continue
            with atomic.atomic_path(target) as tmp:
                tmp.write_bytes(data)

    def _upload_bytes(self, data: bytes, name: str) -> None:
        try:
            parent = f"{self.path}/{name}".rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(f"{self.path}/{name}") as f:
                f.write(data)
        except OSError as e:
            raise DataError(f"cannot write {name} of the run at {self} ({first_line(e, 150)}): "
                            f"check the URI and your credentials for it") from None


@contextmanager
def working_copy(location: str | os.PathLike, pull: tuple[str, ...], push: tuple[str, ...]) -> Iterator[Path]:
    """A local folder for a command that reads and writes a run's files (an evaluation): for a run at a
    URI, `pull` is fetched first and afterwards the files it wrote or changed under `push` are copied back;
    a path is used in place."""
    run = RunFolder(location)
    if not run.remote:
        yield run.local
        return
    if run.read_bytes(CONFIG_FILE) is None:
        raise DataError(f"{run} is not a run folder (no config.yaml): pass the --out of `rrdist pretrain`")
    run.pull(CONFIG_FILE, *pull)
    before = _file_stamps(run.local, push)
    yield run.local
    after = _file_stamps(run.local, push)
    run.push(*[name for name, stamp in after.items() if before.get(name) != stamp])


def _file_stamps(folder: Path, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    stamps = {}
    for name in names:
        for path in [folder / name, *(folder / name).rglob("*")]:
            if path.is_file():
                st = path.stat()
                stamps[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return stamps


def absolute(location: str) -> str:
    """A path the user gave, made absolute against the folder the command runs in (what a relative
    path means to the user), so that every process and node reads it alike; URIs and "" unchanged."""
    if not location or is_uri(location):
        return location
    return os.path.abspath(os.path.expanduser(location))


# Set in the environment of a job that `rrdist submit` sends: its working folder is a temporary copy.
SUBMITTED = "RRDIST_SUBMITTED"


def check_folder(path: str | os.PathLike, flag: str) -> None:
    """A folder to read or write: refused in one line if it is a file, if it (or, when it does not
    exist yet, its nearest existing parent) cannot be written, or if it lies in the temporary working
    folder of a submitted job (which Ray deletes)."""
    folder = Path(path).expanduser().resolve()
    if os.environ.get(SUBMITTED) and folder.is_relative_to(Path.cwd().resolve()):
        raise ConfigError(f"{flag} {path} lies in this job's temporary copy of the working folder, which Ray deletes: "
                          f"pass {flag} as an absolute path that the cluster's nodes share, or a bucket URI")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder: pass a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} lies under the file {existing}: pass a folder")
    try:  # the permission bits do not tell (root; read-only file systems; /sys): make a folder there and remove it
        os.rmdir(tempfile.mkdtemp(prefix=".rrdist-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written ({existing}: {e.strerror or first_line(e)}): "
                          f"pass a folder you can write") from None

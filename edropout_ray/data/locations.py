"""Where files live: a local path, or a `pyarrow.fs` URI every node of a cluster can open.

A URI is what pyarrow's `FileSystem.from_uri` reads: `s3://bucket/path`, `gs://bucket/path`,
`file:///path`, with the filesystem's options as a query (`?endpoint_override=host:port&scheme=http`
for an S3-compatible store). Readers (data sets) and writers (artifacts/storage.py) parse a location
here, so the same text means the same place everywhere; a local path is made absolute against the
directory the command started in, before anything (Tune) changes it. Data sets read as files are
fetched from a URI once per node into a local cache (`local_copy`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def absolute(location: str | os.PathLike) -> str:
    """A URI as given; a local path absolute (and `~` expanded), against the current directory."""
    text = str(location)
    return text if is_uri(text) else str(Path(text).expanduser().absolute())


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it; pyarrow's errors (ValueError, OSError) pass through."""
    text = str(location)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), absolute(text)


def join(location: str | os.PathLike, *names: str) -> str:
    """`location/name/...`: under a URI the names go into its path, its query options stay after it."""
    text = str(location)
    if not is_uri(text):
        return str(Path(text, *names))
    parts = urllib.parse.urlsplit(text)
    return urllib.parse.urlunsplit(parts._replace(path="/".join([parts.path.rstrip("/"), *names])))


CACHE_ENV = "EDROPOUT_RAY_DATA_CACHE"  # where a node keeps data sets fetched from URIs


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edropout_ray" / "data")


def local_copy(location: str | os.PathLike) -> Path:
    """A local folder as it is; a URI's folder fetched once per node into the cache, and that copy.

    Several trials or tasks of one node may start at once: one fetches while holding a lock file, the
    others wait on the lock and then find the copy. The copy is made under a temporary name and renamed
    into place, so a folder in the cache is always whole, even after a fetch was killed half way.
    A changed data set under the same URI is not fetched again: delete its folder in the cache.
    """
    text = str(location)
    if not is_uri(text):
        return Path(absolute(text))
    filesystem, path = resolve(text)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.strip("/"))[-60:]
    target = cache_root() / f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if not target.is_dir():
            if filesystem.get_file_info(path).type != pafs.FileType.Directory:
                raise FileNotFoundError(f"data_dir {text} is not a folder (nothing found at {path}); copy the data "
                                        "set's files there first")
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                pafs.copy_files(path, str(staging), source_filesystem=filesystem,
                                destination_filesystem=pafs.LocalFileSystem())
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return target

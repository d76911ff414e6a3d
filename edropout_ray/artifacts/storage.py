"""Where a run's files live: a local folder, or any `pyarrow.fs` URI a cluster can share (s3://, gs://, ...).

A checkpoint on the head node's disk is lost with the head, and a driver started elsewhere cannot
read it; on object storage every node (and the next driver) can. Writes are atomic as on a local
disk: locally a temporary file, fsync and rename; elsewhere the file is written under a temporary
name and moved into place, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ..errors import ConfigError


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class Folder:
    """A folder on a pyarrow filesystem; `str()` gives it back as the user wrote it."""

    filesystem: pafs.FileSystem
    path: str
    location: str

    def __str__(self) -> str:
        return self.location

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def file(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.file(name)).type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(self.file(name)) as stream:
            return stream.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically replace `name` with `data`."""
        self.filesystem.create_dir(self.path, recursive=True)
        if self.is_local:
            path = Path(self.file(name))
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            return
        temporary = self.file(name + ".tmp")
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        self.filesystem.move(temporary, self.file(name))

    def upload(self, local_folder: Path) -> None:
        """Copy every file of `local_folder` (the run's other artifacts) into this folder."""
        self.filesystem.create_dir(self.path, recursive=True)
        pafs.copy_files(str(local_folder), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)


def open_folder(location: str | os.PathLike | Folder, filesystem: pafs.FileSystem | None = None) -> Folder:
    """A local path, or a URI pyarrow understands (s3://bucket/runs/a, gs://..., file:///...)."""
    if isinstance(location, Folder):
        return location
    text = str(location)
    if filesystem is not None:
        return Folder(filesystem, text, text)
    if not is_uri(text):
        return Folder(pafs.LocalFileSystem(), str(Path(text).absolute()), text)
    try:
        resolved, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"--output {text!r} is not a folder pyarrow can open ({error}); give a local path or "
                          "an s3://, gs:// or file:// URI") from None
    return Folder(resolved, path, text)

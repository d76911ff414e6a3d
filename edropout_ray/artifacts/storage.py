"""Where a run's files live: a local folder, or any `pyarrow.fs` URI a cluster can share (s3://, gs://, ...).

A checkpoint on the head node's disk is lost with the head, and a driver started elsewhere cannot
read it; on object storage every node (and the next driver) can. Writes are atomic as on a local
disk: locally a temporary file, fsync and rename; elsewhere the file is written under a temporary
name and moved into place, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..data.locations import is_uri, join, resolve
from ..errors import ConfigError

__all__ = ["Folder", "is_uri", "open_folder"]


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

    def child(self, name: str) -> "Folder":
        """The folder `name` (a relative path such as 'edropout/seed0') inside this one; a local one by its
        absolute path, so a process started elsewhere (a Ray task) finds the same folder."""
        location = self.file(name) if self.is_local else join(self.location, *name.split("/"))
        return Folder(self.filesystem, self.file(name), location)

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.file(name)).type == pafs.FileType.File

    def has_folder(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.file(name)).type == pafs.FileType.Directory

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        """A Parquet file, written whole (atomically, as `write_bytes`)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(name, sink.getvalue().to_pybytes())

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

    @contextlib.contextmanager
    def staged(self):
        """A local folder for files made by libraries that write paths (plots, exported models): this
        folder itself when local, else a temporary one uploaded here when the block ends without error."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="edropout-staging-") as staging:
            yield Path(staging)
            self.upload(Path(staging))


def open_folder(location: str | os.PathLike | Folder, filesystem: pafs.FileSystem | None = None) -> Folder:
    """A local path, or a URI pyarrow understands (s3://bucket/runs/a, gs://..., file:///...)."""
    if isinstance(location, Folder):
        return location
    text = str(location)
    if filesystem is not None:
        return Folder(filesystem, text, text)
    try:
        resolved, path = resolve(text)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"--output {text!r} is not a folder pyarrow can open ({error}); give a local path or "
                          "an s3://, gs:// or file:// URI") from None
    return Folder(resolved, path, text)

"""Run storage: a local folder on one machine, or a URI (``s3://``, ``gs://``, NFS as ``file://``) on a cluster."""
from __future__ import annotations

from pathlib import Path


def is_uri(location: str) -> bool:
    """True for storage given as a URI (``s3://``, ``gs://``, ``file://`` ...), which stays as written."""
    return "://" in location


def resolve_storage(location: str) -> str:
    """A URI as written; a local path made absolute (Ray workers run in other directories)."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def run_location(storage: str, name: str) -> str:
    """A run's folder in its storage: a local path or a URI (``s3://bucket/prefix/<name>``)."""
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage) / name)


def write_bytes(location: str, data: bytes) -> None:
    """Write a file to a local path or, through pyarrow's filesystems, to a storage URI."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(location: str) -> bytes | None:
    """A file's bytes from a local path or a storage URI; None when there is no such file."""
    if not is_uri(location):
        return Path(location).read_bytes() if Path(location).is_file() else None
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read()

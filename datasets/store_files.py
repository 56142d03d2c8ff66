"""Where a zarr v2 store's files are: a directory, or a zip of one (Diffusion Policy's and UMI's
``.zarr.zip``), behind the few reads :mod:`.zarr_checks` makes before zarr opens anything.

Both give: whether a metadata file is there, its JSON (read within a bound), the chunk files
under an array (name relative to the array, size, and whether it is a plain file), and the
store zarr opens. A zip is read in place, never extracted, and only ever read:

- its central directory is at most ``LIMITS["zip_directory_bytes"]`` (read from the end record
  before :mod:`zipfile` parses it: each entry becomes a Python object ten times its size);
- a member's size is the one the directory declares, and :mod:`zipfile` never reads or inflates
  past it, so the checks on sizes hold for what is read;
- a member whose file mode says link is refused as a chunk like a link in a directory.
"""
from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator

import zarr

from cadence.untrusted import LIMITS, UntrustedFileError, open_regular, parse_json, read_json

ZIP_SUFFIX = ".zip"
_END, _END64_LOCATOR = b"PK\x05\x06", b"PK\x06\x07"


def is_zip_store(path: Path) -> bool:
    """A store given as a file: a zip of a zarr directory (DP's and UMI's ``*.zarr.zip``)."""
    return path.suffix == ZIP_SUFFIX and not path.is_dir()


class DirectoryFiles:
    """A zarr store that is a directory."""

    def __init__(self, root: Path):
        self.root = root

    def where(self, key: str) -> Path:
        return self.root / key

    def is_file(self, key: str) -> bool:
        return (self.root / key).is_file()

    def json(self, key: str) -> Any:
        return read_json(self.root / key)

    def members(self, prefix: str) -> Iterator[tuple[tuple[str, ...], int, bool]]:
        """Every file under ``prefix``: its path parts relative to it, its size, whether it is a
        regular file (a link is not followed: it could lead to any file on the machine)."""
        folder = self.root / prefix
        for parent, _, files in os.walk(folder):
            for name in files:
                path = Path(parent, name)
                try:
                    info = path.lstat()
                except OSError:
                    yield path.relative_to(folder).parts, 0, False
                    continue
                yield path.relative_to(folder).parts, info.st_size, stat.S_ISREG(info.st_mode)

    def zarr_store(self):
        return str(self.root)


class ZipFiles:
    """A zarr store zipped (read only): zarr's own :class:`zarr.ZipStore`, checked first."""

    def __init__(self, path: Path):
        self.root = path
        _check_directory_size(path)
        try:
            self._store = zarr.ZipStore(str(path), mode="r")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UntrustedFileError(f"{path}: not a readable zip ({type(exc).__name__}: {exc})"[:300]) from None
        self._infos = {info.filename: info for info in self._store.zf.infolist()}

    def where(self, key: str) -> str:
        return f"{self.root}:{key}"

    def is_file(self, key: str) -> bool:
        return key in self._infos

    def json(self, key: str) -> Any:
        info = self._infos.get(key)
        where = self.where(key)
        if info is None:
            raise UntrustedFileError(f"{where}: missing")
        if info.file_size > LIMITS["json_bytes"]:
            raise UntrustedFileError(f"{where}: {info.file_size:,} bytes, more than the {LIMITS['json_bytes']:,} "
                                     "this file may have")
        try:
            data = self._store.zf.read(info)
        except Exception as exc:     # zipfile raises many types for a corrupt member
            raise UntrustedFileError(f"{where}: cannot read ({type(exc).__name__}: {exc})"[:300]) from None
        return parse_json(data, where)

    def members(self, prefix: str) -> Iterator[tuple[tuple[str, ...], int, bool]]:
        start = prefix.rstrip("/") + "/"
        for name, info in self._infos.items():
            if name.startswith(start) and not info.is_dir():
                kind = stat.S_IFMT(info.external_attr >> 16)       # none recorded, or a regular file
                yield tuple(name[len(start):].split("/")), info.file_size, kind in (0, stat.S_IFREG)

    def zarr_store(self):
        return self._store


def store_files(path: Path) -> DirectoryFiles | ZipFiles:
    return ZipFiles(path) if is_zip_store(path) else DirectoryFiles(path)


def _check_directory_size(path: Path) -> None:
    """The zip's central directory, read from its end record, within ``LIMITS["zip_directory_bytes"]``."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        tail_at = max(0, size - (22 + 65535))
        f.seek(tail_at)
        tail = f.read()
        at = tail.rfind(_END)
        if at < 0 or len(tail) - at < 22:
            raise UntrustedFileError(f"{path}: not a zip (no end of central directory record)")
        directory = struct.unpack_from("<I", tail, at + 12)[0]
        if directory == 0xFFFFFFFF and at >= 20 and tail[at - 20: at - 16] == _END64_LOCATOR:
            end64 = struct.unpack_from("<Q", tail, at - 20 + 8)[0]
            f.seek(end64)
            record = f.read(56)
            if len(record) < 56 or record[:4] != b"PK\x06\x06":
                raise UntrustedFileError(f"{path}: not a zip (bad zip64 end of central directory record)")
            directory = struct.unpack_from("<Q", record, 40)[0]
    if directory > LIMITS["zip_directory_bytes"]:
        raise UntrustedFileError(f"{path}: its central directory is {directory:,} bytes, more than "
                                 f"{LIMITS['zip_directory_bytes']:,}")

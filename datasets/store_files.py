"""Where a zarr v2 store's files are: a directory, or a zip of one (Diffusion Policy's and UMI's
``.zarr.zip``), behind the few reads :mod:`.zarr_checks` makes before zarr opens anything.

Both give: whether a metadata file is there, its JSON (read within a bound), the chunk files
under an array (name relative to the array, size, and whether it is a plain file), and the
store zarr opens.

A directory's files are read only below it: no part of a path below the store's folder may be
a link (a ``data/<key>`` linked to a folder elsewhere would be read as the store's).

A zip is read in place, never extracted, and only ever read:

- its central directory is at most ``LIMITS["zip_directory_bytes"]``, found as :mod:`zipfile`
  finds it (zip64 records included) before zipfile parses it (each entry becomes a Python
  object ten times its size);
- members are stored or deflated (bzip2 and LZMA members inflate whole, whatever size they
  declare), not encrypted, their names without backslashes (zarr reads ``a\\b`` as ``a/b``);
- every read takes at most the size the member declares (zipfile inflates a whole member in
  one call when asked for all of it: a 1 kB member declaring 18 bytes inflated to 2 GB), so the
  checks on declared sizes hold for what is read;
- a member whose file mode says link is refused as a chunk, like a link in a directory.
"""
from __future__ import annotations

import os
import stat
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import zarr

from cadence.untrusted import LIMITS, UntrustedFileError, open_regular, parse_json, read_json

ZIP_SUFFIX = ".zip"
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def is_zip_store(path: Path) -> bool:
    """A store given as a file: a zip of a zarr directory (DP's and UMI's ``*.zarr.zip``)."""
    return path.suffix == ZIP_SUFFIX and not path.is_dir()


class DirectoryFiles:
    """A zarr store that is a directory."""

    def __init__(self, root: Path):
        self.root = root

    def where(self, key: str) -> Path:
        return self.root / key

    def _below(self, key: str) -> Path:
        """``root/key``, refused if any part of it below the root is a link."""
        path = self.root
        for part in Path(key).parts:
            path = path / part
            if path.is_symlink():
                raise UntrustedFileError(f"{path}: a link inside the store (the store's files are read only "
                                         "below its folder)")
        return path

    def is_file(self, key: str) -> bool:
        return self._below(key).is_file()

    def json(self, key: str) -> Any:
        return read_json(self._below(key))

    def members(self, prefix: str) -> Iterator[tuple[tuple[str, ...], int, bool]]:
        """Every file under ``prefix``: its path parts relative to it, its size, whether it is a
        regular file (a link is not followed: it could lead to any file on the machine)."""
        folder = self._below(prefix)
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


class _BoundedZipStore(zarr.ZipStore):
    """zarr's ZipStore reading each member only up to the size it declares."""

    def __getitem__(self, key):
        with self.mutex:
            info = self.zf.getinfo(key)           # KeyError: zarr's "no such key"
            with self.zf.open(info) as f:
                return f.read(info.file_size)


class ZipFiles:
    """A zarr store zipped (read only): zarr's ZipStore, its members checked first."""

    def __init__(self, path: Path):
        self.root = path
        _check_directory_size(path)
        try:
            self._store = _BoundedZipStore(str(path), mode="r")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UntrustedFileError(f"{path}: not a readable zip ({type(exc).__name__}: {exc})"[:300]) from None
        self._infos = {}
        self._arrays: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)   # "data/<key>" -> its members
        for info in self._store.zf.infolist():
            name = info.filename
            if "\\" in name or info.compress_type not in ZIP_METHODS or info.flag_bits & 0x1:
                raise UntrustedFileError(f"{path}:{name[:200]}: a member zarr cannot read as written here "
                                         "(a backslash in its name, encrypted, or compressed other than "
                                         "stored / deflated)")
            self._infos[name] = info
            parts = name.split("/")
            if len(parts) > 2 and not info.is_dir():
                self._arrays["/".join(parts[:2])].append(info)

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
            data = self._store[key]
        except Exception as exc:     # zipfile raises many types for a corrupt member
            raise UntrustedFileError(f"{where}: cannot read ({type(exc).__name__}: {exc})"[:300]) from None
        return parse_json(data, where)

    def members(self, prefix: str) -> Iterator[tuple[tuple[str, ...], int, bool]]:
        """The members under ``prefix`` (an array: ``data/<key>`` or ``meta/<name>``)."""
        start = prefix.rstrip("/") + "/"
        for info in self._arrays.get(prefix.rstrip("/"), ()):
            kind = stat.S_IFMT(info.external_attr >> 16)       # none recorded, or a regular file
            yield tuple(info.filename[len(start):].split("/")), info.file_size, kind in (0, stat.S_IFREG)

    def zarr_store(self):
        return self._store


def store_files(path: Path) -> DirectoryFiles | ZipFiles:
    return ZipFiles(path) if is_zip_store(path) else DirectoryFiles(path)


def _check_directory_size(path: Path) -> None:
    """The zip's central directory within ``LIMITS["zip_directory_bytes"]``, read from the end
    records exactly as :mod:`zipfile` reads them (so that it parses what was checked)."""
    with open_regular(path) as f:
        try:
            end = zipfile._EndRecData(f)
        except OSError as exc:
            raise UntrustedFileError(f"{path}: not a zip ({exc})") from None
    if end is None:
        raise UntrustedFileError(f"{path}: not a zip (no end of central directory record)")
    size = end[zipfile._ECD_SIZE]
    if size > LIMITS["zip_directory_bytes"]:
        raise UntrustedFileError(f"{path}: its central directory is {size:,} bytes, more than "
                                 f"{LIMITS['zip_directory_bytes']:,}")

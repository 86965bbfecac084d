"""Safe extraction of downloaded archives (.tar, .tar.gz/.tgz, .zip).

A published archive is data from the internet, so every member is checked before anything is
written, and a bad one aborts the whole extraction:

- its path must stay inside the target: no absolute path (``/x``, ``\\x``, ``C:x``), no ``..``
  component, no NUL byte;
- it must be a regular file or a directory: symbolic links and hard links are refused whatever
  their target (the published data sets have none, so refusing them all is simpler and stricter
  than judging where each one points), as are device files, FIFOs and sockets.

Tar members are then extracted with tarfile's ``filter="data"`` (Python >= 3.11.4), which repeats
the path and link checks and drops set-uid bits and odd permissions.

The archive is read in one streaming pass (a .tar.gz is decompressed once) into a fresh
temporary folder next to the target (``.<target>.XXXX.partial``), which is renamed to the target
only when every member has been written. An interrupted or refused extraction leaves no target
behind, so an existing target always means a complete extraction.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_ZIP_SUFFIXES = (".zip",)
ARCHIVE_SUFFIXES = _TAR_SUFFIXES + _ZIP_SUFFIXES
_COPY_BUFFER = 1 << 20


class UnsafeArchiveError(ValueError):
    """An archive member that could write outside the target or is not a plain file or folder."""

    def __init__(self, archive: Path, member: str, reason: str):
        self.archive = Path(archive)
        self.member = member
        super().__init__(f"refusing to extract {self.archive}: member {member!r} {reason}; nothing was extracted")


class MissingMembersError(KeyError):
    """Requested members that the archive does not hold (or holds more than once)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def is_archive(name: str | os.PathLike) -> bool:
    """Whether a file name ends in a suffix :func:`safe_extract` handles."""
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str | os.PathLike) -> str:
    """The file name without its archive suffix: ``Geo-FNO.tar.gz`` -> ``Geo-FNO``."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def member_matches(member: str, wanted: str) -> bool:
    """Whether archive path ``member`` is the requested ``wanted`` path or ends with ``/wanted``.

    Matching on a path suffix lets a registry name ``darcy/piececonst_r421_N1024_smooth1.mat``
    without knowing whether the archive stores it under ``FNO/``, ``./FNO/`` or at the top level.
    """
    member = _strip_dot_prefix(member)
    wanted = _strip_dot_prefix(wanted)
    return member == wanted or member.endswith("/" + wanted)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, members: Iterable[str] | None = None) -> list[Path]:
    """Extract ``archive`` into the new folder ``target``; return the extracted files.

    archive: a .tar, .tar.gz/.tgz or .zip file (the kind is recognised from the name, else from the
        content).
    target: must not exist yet; it is created atomically (renamed from a temporary folder next to
        it) once the extraction is complete.
    members: archive paths (or path suffixes, see :func:`member_matches`) to extract; None extracts
        every file. Each must match exactly one archive member, else :class:`MissingMembersError`.
        Every member is safety-checked, selected or not.

    Returns the extracted regular files under ``target``: in the order of ``members`` when given,
    else in archive order. Raises :class:`UnsafeArchiveError` (naming the archive and the member)
    for a hostile member; nothing is left behind then.
    """
    archive = Path(archive)
    target = Path(target)
    wanted = None if members is None else [_strip_dot_prefix(m) for m in members]
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"extraction target {target} already exists; remove it to extract {archive} again")
    kind = _archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        extract = _extract_zip if kind == "zip" else _extract_tar
        written = extract(archive, staging, wanted)
        chosen = written if wanted is None else _pick(archive, written, wanted)
        os.rename(staging, target)  # atomic; fails if someone else created target meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [target / rel for rel in chosen]


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(_ZIP_SUFFIXES):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ValueError(f"{archive} is neither a tar nor a zip archive (expected one of {', '.join(ARCHIVE_SUFFIXES)})")


def _strip_dot_prefix(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path


def _relative_path(archive: Path, name: str) -> str | None:
    """The member's path relative to the target (posix form), or None for the root folder itself."""
    if not name:
        raise UnsafeArchiveError(archive, name, "has an empty name")
    if "\x00" in name:
        raise UnsafeArchiveError(archive, name, "contains a NUL byte")
    unified = name.replace("\\", "/")  # a backslash is a separator on Windows: judge it as one
    if unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":"):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "has a '..' component that leaves the target folder")
    return "/".join(parts) if parts else None


def _extract_tar(archive: Path, staging: Path, wanted: list[str] | None) -> list[str]:
    use_data_filter = hasattr(tarfile, "data_filter")
    written: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # one forward pass over the (possibly compressed) stream
            rel = _relative_path(archive, member.name)
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise UnsafeArchiveError(archive, member.name, f"is a {kind} link (to {member.linkname!r})")
            if member.ischr() or member.isblk() or member.isfifo():
                raise UnsafeArchiveError(archive, member.name, "is a device file or FIFO")
            if not (member.isreg() or member.isdir()):
                raise UnsafeArchiveError(archive, member.name, f"has unsupported type {member.type!r}")
            if rel is None or member.isdir():
                if rel is not None and wanted is None:
                    (staging / rel).mkdir(parents=True, exist_ok=True)
                continue
            if wanted is not None and not any(member_matches(rel, w) for w in wanted):
                continue
            member.name = rel  # extract under the normalised name
            try:
                if use_data_filter:
                    tar.extract(member, staging, set_attrs=True, filter="data")
                else:  # Python < 3.11.4: our own checks above are the only guard
                    tar.extract(member, staging, set_attrs=False)
            except tarfile.FilterError as err:
                raise UnsafeArchiveError(archive, member.name, f"was refused by tarfile's data filter ({err})") from err
            if rel not in written:
                written.append(rel)
    return written


def _extract_zip(archive: Path, staging: Path, wanted: list[str] | None) -> list[str]:
    written: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check everything before writing anything
            _relative_path(archive, info.filename)
            # Unix zip tools store st_mode in the high 16 bits; some leave the file-type bits 0.
            file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if file_type == stat.S_IFLNK:
                raise UnsafeArchiveError(archive, info.filename, "is a symbolic link")
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(archive, info.filename, "is a device file, FIFO or socket")
        for info in infos:
            rel = _relative_path(archive, info.filename)
            if rel is None:
                continue
            path = staging / rel
            if info.is_dir():
                if wanted is None:
                    path.mkdir(parents=True, exist_ok=True)
                continue
            if wanted is not None and not any(member_matches(rel, w) for w in wanted):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            # Streamed copy (zipfile checks the CRC); no permission bits are applied.
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, _COPY_BUFFER)
            if rel not in written:
                written.append(rel)
    return written


def _pick(archive: Path, written: list[str], wanted: list[str]) -> list[str]:
    chosen, problems = [], []
    for w in wanted:
        hits = [rel for rel in written if member_matches(rel, w)]
        if len(hits) == 1:
            chosen.append(hits[0])
        elif not hits:
            problems.append(f"{w!r} is not in the archive")
        else:
            problems.append(f"{w!r} matches several members: {', '.join(hits)}")
    if problems:
        raise MissingMembersError(f"{archive}: " + "; ".join(problems))
    return chosen

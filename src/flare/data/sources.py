"""Registry of the published data sources (SPEC §4) and the checksum store that pins them.

Every data set of the benchmark is published as files in a Hugging Face dataset repository,
downloadable at the plain URL ``<base_url>/datasets/<repo>/resolve/main/<file>``:

| data set | repository | file | members used |
|---|---|---|---|
| elasticity | vedantpuri/PDESurrogates | Geo-FNO.tar.gz | elasticity/Meshes/Random_UnitCell_{sigma,XY}_10.npy |
| airfoil | vedantpuri/PDESurrogates | Geo-FNO.tar.gz | airfoil/naca/NACA_Cylinder_{X,Y,Q}.npy |
| pipe | vedantpuri/PDESurrogates | Geo-FNO.tar.gz | pipe/Pipe_{X,Y,Q}.npy |
| darcy | vedantpuri/PDESurrogates | FNO.tar.gz | darcy/piececonst_r421_N1024_smooth{1,2}.mat |
| drivaerml | vedantpuri/PDESurrogates | drivaerml_surface_presampled_<size>.tar.gz | all (train/, test/ of run_<i>.npz) |
| lpbf | vedantpuri/PDESurrogates | LPBF.tar.gz (variant ``tarball``) | all |
| lpbf | vedantpuri/LPBF_FLARE | data/{train,test}-00000-of-00001.parquet (variant ``index``) | not archives |

Where the names come from: the archive names and the drivaerml sizes are those of the FLARE
reference code's download scripts (vpuri3/FLARE.py ``scripts/download_data.sh`` and
``scripts/download_pdebench_dataset.py``, which also lists a 50k size; ``LPBF.tar.gz`` appears in
the same script of the canxkoz/FLARE.py fork). The member paths are those its loaders read after
``tar -xzf`` in the data root (``Geo-FNO/elasticity/Meshes/...``, ``FNO/darcy/...``); they are
matched as path suffixes (:func:`flare.data.archive.member_matches`), so a different top-level
folder inside the archive does not matter. The LPBF_FLARE index names follow the ``datasets``
library's ``push_to_hub`` convention for the repository's ``data/train-*`` / ``data/test-*``
configuration and are a guess; the per-sample ``train/<case>.npz`` / ``test/<case>.npz`` files
they list can be fetched with :func:`hf_file_url` and :func:`flare.data.download.fetch`.

No sha256 is published for any of these files, so the registry holds none; instead the checksum
store (a YAML mapping ``file name -> sha256``, kept by the project at ``config/checksums.yaml``)
records each file's hash on its first download, and every later use is verified against it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml

from flare.data.archive import MissingMembersError, archive_stem, is_archive, member_matches, safe_extract
from flare.data.download import fetch_with_sha256, file_lock, normalize_sha256

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co"
REVISION = "main"
PDE_SURROGATES = "vedantpuri/PDESurrogates"
LPBF_FLARE = "vedantpuri/LPBF_FLARE"
DRIVAERML_SIZES = ("10k", "40k", "50k", "100k", "200k", "300k", "400k", "500k", "1m")
DEFAULT_VARIANTS = {"drivaerml": "40k", "lpbf": "tarball"}

_CHECKSUMS_HEADER = (
    "# sha256 of each downloaded source file (flare.data.sources), recorded on first download and\n"
    "# verified on every later use. Never edit a hash to make a check pass: find out why it changed.\n"
)


class ChecksumConflictError(ValueError):
    """A checksum store already holds a different hash for a file."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file.

    name: its path inside the repository; also its key in the checksum store and its path under
        the download folder.
    url: where to download it.
    sha256: pinned digest, or None when only the checksum store knows it.
    archive_members: for an archive, the members to extract (path suffixes) — None extracts all;
        ignored for a file that is not an archive.
    variant: which alternative of the data set this file belongs to (drivaerml point count, lpbf
        layout); None for files every variant needs.
    """

    name: str
    url: str
    sha256: str | None
    archive_members: list[str] | None
    variant: str | None = None

    @property
    def is_archive(self) -> bool:
        return is_archive(self.name)


def hf_file_url(repo: str, path: str, base_url: str = DEFAULT_BASE_URL, revision: str = REVISION) -> str:
    """Plain download URL of ``path`` in the Hugging Face dataset repository ``repo``."""
    return f"{base_url.rstrip('/')}/datasets/{repo}/resolve/{revision}/{quote(path)}"


def build_sources(base_url: str = DEFAULT_BASE_URL) -> dict[str, list[RemoteFile]]:
    """The registry with every URL under ``base_url`` (e.g. ``http://127.0.0.1:PORT`` in tests)."""

    def hf(repo, name, members=None, variant=None):
        return RemoteFile(name, hf_file_url(repo, name, base_url), None, members, variant)

    geo_fno = "Geo-FNO.tar.gz"
    return {
        "elasticity": [hf(PDE_SURROGATES, geo_fno, [
            "elasticity/Meshes/Random_UnitCell_sigma_10.npy",  # [972, S] stress, sample axis last
            "elasticity/Meshes/Random_UnitCell_XY_10.npy",  # [972, 2, S] point coordinates
        ])],
        "airfoil": [hf(PDE_SURROGATES, geo_fno, [
            "airfoil/naca/NACA_Cylinder_X.npy",  # [S, 221, 51]
            "airfoil/naca/NACA_Cylinder_Y.npy",  # [S, 221, 51]
            "airfoil/naca/NACA_Cylinder_Q.npy",  # [S, C, 221, 51], Mach number is channel 4
        ])],
        "pipe": [hf(PDE_SURROGATES, geo_fno, [
            "pipe/Pipe_X.npy",  # [S, 129, 129]
            "pipe/Pipe_Y.npy",  # [S, 129, 129]
            "pipe/Pipe_Q.npy",  # [S, C, 129, 129], velocity is channel 0
        ])],
        "darcy": [hf(PDE_SURROGATES, "FNO.tar.gz", [
            "darcy/piececonst_r421_N1024_smooth1.mat",  # coeff, sol: [1024, 421, 421]
            "darcy/piececonst_r421_N1024_smooth2.mat",
        ])],
        "drivaerml": [
            hf(PDE_SURROGATES, f"drivaerml_surface_presampled_{size}.tar.gz", None, size) for size in DRIVAERML_SIZES
        ],
        "lpbf": [
            hf(PDE_SURROGATES, "LPBF.tar.gz", None, "tarball"),
            hf(LPBF_FLARE, "data/train-00000-of-00001.parquet", None, "index"),
            hf(LPBF_FLARE, "data/test-00000-of-00001.parquet", None, "index"),
        ],
    }


SOURCES: dict[str, list[RemoteFile]] = build_sources()


def select_files(dataset: str, variant: str | None = None, base_url: str = DEFAULT_BASE_URL) -> list[RemoteFile]:
    """The files of ``dataset`` for ``variant`` (default: :data:`DEFAULT_VARIANTS`), URLs under ``base_url``."""
    sources = build_sources(base_url)
    if dataset not in sources:
        raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(sources))}")
    files = sources[dataset]
    variants = sorted({f.variant for f in files if f.variant is not None})
    if not variants:
        if variant is not None:
            raise ValueError(f"dataset {dataset!r} has no variants; got variant={variant!r}")
        return files
    chosen = variant if variant is not None else DEFAULT_VARIANTS[dataset]
    if chosen not in variants:
        raise ValueError(f"dataset {dataset!r} has no variant {chosen!r}; choose one of {', '.join(variants)}")
    return [f for f in files if f.variant in (None, chosen)]


def load_checksums(path: str | os.PathLike) -> dict[str, str]:
    """The checksum store at ``path`` as ``{file name: sha256}``; empty when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"checksum store {path} must be a mapping of file name to sha256; got {type(data).__name__}")
    checksums = {}
    for name, digest in data.items():
        try:
            checksums[str(name)] = normalize_sha256(digest)
        except ValueError as err:
            raise ValueError(f"checksum store {path}, entry {name!r}: {err}") from None
    return checksums


def record_checksum(path: str | os.PathLike, name: str, sha256: str) -> None:
    """Add ``name: sha256`` to the checksum store at ``path`` (created if missing).

    Recording the hash already known is a no-op; a different known hash raises
    :class:`ChecksumConflictError` naming both and is never overwritten. The new entry is appended
    to the existing text (comments survive) and the file replaced atomically; a lock serialises
    concurrent writers.
    """
    path = Path(path)
    digest = normalize_sha256(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _store_lock(path):
        known = load_checksums(path).get(name)
        if known == digest:
            return
        if known is not None:
            raise ChecksumConflictError(
                f"checksum store {path} records sha256 {known} for {name!r}; refusing to replace it with {digest}. "
                f"The published file changed or the download is corrupt: investigate before editing {path}"
            )
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if not text.strip():
            text = _CHECKSUMS_HEADER
        if not text.endswith("\n"):
            text += "\n"
        updated = text + yaml.safe_dump({name: digest}, default_flow_style=False)
        parsed = yaml.safe_load(updated)
        if not isinstance(parsed, dict) or parsed.get(name) != digest:  # e.g. a store written in flow style
            updated = _CHECKSUMS_HEADER + yaml.safe_dump({**load_checksums(path), name: digest}, default_flow_style=False)
        _write_atomically(path, updated)


def download_source(
    dataset: str,
    dest_dir: str | os.PathLike,
    base_url: str = DEFAULT_BASE_URL,
    checksums_file: str | os.PathLike | None = None,
    variant: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 1.0,
) -> list[Path]:
    """Fetch ``dataset``'s files into ``dest_dir``, verify them, extract archives; return the data files.

    Each file is downloaded to ``dest_dir/<name>`` (kept as the verified cache). Its expected
    sha256 is the registry's, else the one in ``checksums_file``; without either the computed hash
    is recorded in ``checksums_file`` (after a successful extraction), so every later use is
    verified. An archive is extracted with :func:`flare.data.archive.safe_extract` into
    ``dest_dir/<archive stem>/``, keeping the archive's own paths (``Geo-FNO.tar.gz`` holding
    ``Geo-FNO/pipe/Pipe_Q.npy`` gives ``dest_dir/Geo-FNO/Geo-FNO/pipe/Pipe_Q.npy``), and only the
    members the data set needs when the registry names them; members another data set already
    extracted from the same archive are reused, missing ones are added. To re-extract, delete the
    extraction folder.

    Returns the files to read: for archives with named members, those members in registry order
    (elasticity: ``[sigma, XY]``); for other archives every extracted file, sorted by path; for
    plain files the file itself.
    """
    dest_dir = Path(dest_dir)
    files = select_files(dataset, variant, base_url)
    known = load_checksums(checksums_file) if checksums_file is not None else {}
    outputs: list[Path] = []
    for remote in files:
        expected = _expected_sha256(remote, known, checksums_file)
        if expected is None and checksums_file is None:
            log.warning("no sha256 known for %s and no checksum store given: it cannot be verified", remote.name)
        path, actual = fetch_with_sha256(
            remote.url, dest_dir / remote.name, expected,
            retries=retries, timeout=timeout, progress=progress, backoff=backoff,
        )
        if remote.is_archive:
            outputs.extend(_extract(remote, path, dest_dir))
        else:
            outputs.append(path)
        if checksums_file is not None and expected is None:
            record_checksum(checksums_file, remote.name, actual)
    return outputs


def _expected_sha256(remote: RemoteFile, known: dict[str, str], checksums_file) -> str | None:
    pinned = normalize_sha256(remote.sha256) if remote.sha256 is not None else None
    stored = known.get(remote.name)
    if pinned is not None and stored is not None and pinned != stored:
        raise ChecksumConflictError(
            f"{remote.name}: the source registry pins sha256 {pinned} but {checksums_file} records {stored}"
        )
    return pinned if pinned is not None else stored


def _extract(remote: RemoteFile, archive: Path, dest_dir: Path) -> list[Path]:
    target = dest_dir / archive_stem(remote.name)
    with file_lock(dest_dir / f".{target.name}.extract.lock"):
        if remote.archive_members is None:
            if not target.exists():  # targets appear only complete (atomic rename)
                safe_extract(archive, target)
            return sorted(p for p in target.rglob("*") if p.is_file())

        present = _find_members(target, remote.archive_members)
        missing = [m for m, p in zip(remote.archive_members, present) if p is None]
        if missing:
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=dest_dir))
            try:
                extracted = safe_extract(archive, scratch / target.name, missing)
                if not target.exists():
                    os.rename(scratch / target.name, target)
                else:  # add the new members, each file appearing whole (rename)
                    for source in extracted:
                        rel = source.relative_to(scratch / target.name)
                        (target / rel).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(source, target / rel)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            present = _find_members(target, remote.archive_members)
        unresolved = [m for m, p in zip(remote.archive_members, present) if p is None]
        if unresolved:
            raise MissingMembersError(
                f"{target}: cannot tell which file is {', '.join(map(repr, unresolved))} (several match); "
                f"remove {target} to extract {archive} afresh"
            )
        return present


def _find_members(target: Path, members: list[str]) -> list[Path | None]:
    """For each requested member, the single file under ``target`` it matches, else None."""
    if not target.exists():
        return [None] * len(members)
    files = [p for p in target.rglob("*") if p.is_file()]
    found: list[Path | None] = []
    for member in members:
        hits = [p for p in files if member_matches(p.relative_to(target).as_posix(), member)]
        found.append(hits[0] if len(hits) == 1 else None)
    return found


@contextmanager
def _store_lock(path: Path):
    """Exclusive ``flock`` on the store file itself (no lock file next to it). The store is
    replaced by rename, so after waiting for the lock a writer checks that it still holds the file
    now at ``path`` and otherwise locks the new one."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

"""Miniature copies of the published archives and hostile archives, for tests.

The miniatures have the published member names and axis order (SPEC §4) with tiny arrays:
elasticity ``sigma [972, S]`` and ``XY [972, 2, S]`` (sample axis last); airfoil and pipe
``X, Y [S, n1, n2]`` and ``Q [S, C, n1, n2]``; Darcy ``.mat`` files with ``coeff, sol [S, r, r]``;
DrivAerML ``run_<i>.npz`` with ``surface_mesh_centers [n, 3]`` and ``surface_fields [n, 4]``.
Grid sizes and the channel counts of ``Q`` are small stand-ins, not the published ones.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from flare.data.darcy import write_fno_mat

HOSTILE_TAR_KINDS = ("absolute", "dotdot", "nested_dotdot", "symlink_out", "hardlink", "device")
HOSTILE_ZIP_KINDS = ("absolute", "dotdot", "symlink")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_tar(path: str | os.PathLike, members: dict[str, bytes], compression: str = "gz") -> Path:
    """A tar archive (``compression``: "gz" or "") of regular files, with their parent folders."""
    path = Path(path)
    folders = sorted({str(Path(name).parent) for name in members} - {"."})
    with tarfile.open(path, f"w:{compression}") as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: str | os.PathLike, members: dict[str, bytes]) -> Path:
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def geo_fno_arrays(samples: int = 3, points: int = 972, airfoil_grid=(11, 5), pipe_grid=(9, 9), seed: int = 0) -> dict[str, np.ndarray]:
    """Member path -> array for a miniature ``Geo-FNO.tar.gz`` (with one member no data set uses)."""
    rng = np.random.default_rng(seed)
    return {
        "Geo-FNO/elasticity/Meshes/Random_UnitCell_sigma_10.npy": rng.random((points, samples)),
        "Geo-FNO/elasticity/Meshes/Random_UnitCell_XY_10.npy": rng.random((points, 2, samples)),
        "Geo-FNO/elasticity/Meshes/Random_UnitCell_rr_10.npy": rng.random((42, samples)),  # unused
        "Geo-FNO/airfoil/naca/NACA_Cylinder_X.npy": rng.random((samples, *airfoil_grid)),
        "Geo-FNO/airfoil/naca/NACA_Cylinder_Y.npy": rng.random((samples, *airfoil_grid)),
        "Geo-FNO/airfoil/naca/NACA_Cylinder_Q.npy": rng.random((samples, 5, *airfoil_grid)),  # Mach: channel 4
        "Geo-FNO/pipe/Pipe_X.npy": rng.random((samples, *pipe_grid)),
        "Geo-FNO/pipe/Pipe_Y.npy": rng.random((samples, *pipe_grid)),
        "Geo-FNO/pipe/Pipe_Q.npy": rng.random((samples, 3, *pipe_grid)),  # velocity: channel 0
    }


def geo_fno_tarball(path: str | os.PathLike, **kwargs) -> dict[str, np.ndarray]:
    """Write a miniature ``Geo-FNO.tar.gz`` to ``path``; returns its arrays by member path."""
    arrays = geo_fno_arrays(**kwargs)
    write_tar(path, {name: npy_bytes(a) for name, a in arrays.items()})
    return arrays


def fno_tarball(path: str | os.PathLike, samples: int = 2, resolution: int = 9, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a miniature ``FNO.tar.gz`` holding ``FNO/darcy/piececonst_r421_N1024_smooth{1,2}.mat``
    (``coeff``, ``sol`` of shape ``[samples, resolution, resolution]``) and one unused member."""
    rng = np.random.default_rng(seed)
    members, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for smooth in (1, 2):
            name = f"FNO/darcy/piececonst_r421_N1024_smooth{smooth}.mat"
            coeff = np.where(rng.random((samples, resolution, resolution)) > 0.5, 12.0, 3.0)
            sol = rng.random((samples, resolution, resolution))
            mat = Path(tmp) / f"s{smooth}.mat"
            write_fno_mat(mat, coeff, sol)
            members[name] = mat.read_bytes()
            arrays[name] = (coeff, sol)
    members["FNO/navier_stokes/NavierStokes_V1e-5_N1200_T20.mat"] = b"not used"
    write_tar(path, members)
    return arrays


def drivaerml_tarball(path: str | os.PathLike, size: str = "40k", train_runs=(1, 2), test_runs=(3,), points: int = 16) -> list[str]:
    """Write a miniature ``drivaerml_surface_presampled_<size>.tar.gz``; returns its member paths."""
    rng = np.random.default_rng(1)
    members = {}
    for split, runs in (("train", train_runs), ("test", test_runs)):
        for run in runs:
            name = f"drivaerml_surface_presampled_{size}/{split}/run_{run}.npz"
            members[name] = npz_bytes(
                surface_mesh_centers=rng.random((points, 3)).astype(np.float32),
                surface_fields=rng.random((points, 4)).astype(np.float32),  # p, wall shear x/y/z
            )
    write_tar(path, members)
    return list(members)


def hostile_tar(path: str | os.PathLike, kind: str) -> tuple[Path, str]:
    """A .tar.gz with one harmless file then one hostile member; returns (path, hostile member name)."""
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if kind in ("absolute", "dotdot", "nested_dotdot"):
            name = {"absolute": "/tmp/flare-evil.txt", "dotdot": "../evil.txt", "nested_dotdot": "data/../../evil.txt"}[kind]
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        elif kind == "symlink_out":
            name = "data/link"
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "../../outside"
            tar.addfile(info)
        elif kind == "hardlink":
            name = "data/hard"
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        elif kind == "device":
            name = "data/null"
            info = tarfile.TarInfo(name)
            info.type = tarfile.CHRTYPE
            info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
        else:
            raise ValueError(f"unknown hostile kind {kind!r}")
    return path, name


def hostile_zip(path: str | os.PathLike, kind: str) -> tuple[Path, str]:
    """A .zip with one harmless file then one hostile member; returns (path, hostile member name)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/ok.txt", b"ok")
        if kind in ("absolute", "dotdot"):
            name = "/tmp/flare-evil.txt" if kind == "absolute" else "data/../../evil.txt"
            info = zipfile.ZipInfo(name)  # ZipInfo keeps the name as given
            zf.writestr(info, b"evil")
        elif kind == "symlink":
            name = "data/link"
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, b"../../outside")
        else:
            raise ValueError(f"unknown hostile kind {kind!r}")
    return path, name

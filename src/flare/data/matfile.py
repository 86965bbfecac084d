"""Read variables from MATLAB ``.mat`` files, whichever format MATLAB wrote.

Two on-disk formats occur in practice:

* v4 / v5 / v7 (MATLAB's own binary format): read with :func:`scipy.io.loadmat`.
* v7.3: an HDF5 file (MATLAB puts a 512-byte userblock in front of it, which HDF5
  skips by itself). Read with h5py. MATLAB is column-major and writes its arrays'
  memory as-is, so an HDF5 reader (row-major) sees every axis reversed: a MATLAB
  ``S×R×R`` array appears as ``R×R×S``. Transposing (reversing all axes) restores
  MATLAB's axis order, so both paths return the same shapes.

The format is decided from the file's contents (``h5py.is_hdf5``), never from its name.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np
import scipy.io


def load_mat(path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Return ``{key: array}`` for each name in ``keys``, in MATLAB's axis order.

    path: a ``str`` or ``os.PathLike`` to a v4/v5/v7 or v7.3 (HDF5) ``.mat`` file.
    keys: variable names to read; only these are read from the file.

    Arrays keep MATLAB's shape: at least 2-D (a MATLAB scalar is ``1×1``), never squeezed.

    Raises:
        FileNotFoundError: ``path`` does not exist (message names the path).
        KeyError: a requested variable is absent (names the key, the file and the keys present).
        ValueError: the file cannot be parsed as a ``.mat`` file, or a variable is not a
            plain numeric array (names the file).
    """
    path = os.fspath(path)
    if isinstance(keys, str):
        # A bare string would be iterated character by character.
        keys = [keys]
    keys = list(keys)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MATLAB file not found: {path!r}")
    if h5py.is_hdf5(path):
        return _load_v73(path, keys)
    return _load_v5(path, keys)


def _missing_key_error(key: str, path: str, present: Sequence[str]) -> KeyError:
    names = ", ".join(repr(k) for k in sorted(present)) or "none"
    return KeyError(f"variable {key!r} not found in MATLAB file {path!r}; variables present: {names}")


def _load_v5(path: str, keys: list[str]) -> dict[str, np.ndarray]:
    """v4/v5/v7 via scipy. Any parse failure becomes a ValueError naming the file."""
    try:
        contents = scipy.io.loadmat(path, variable_names=keys)
    except Exception as err:  # scipy raises a zoo of types on corrupt input (MatReadError, ValueError, OSError, ...)
        raise ValueError(f"cannot read MATLAB file {path!r}: {type(err).__name__}: {err}") from err
    out = {}
    for key in keys:
        if key not in contents:
            try:
                present = [name for name, _shape, _cls in scipy.io.whosmat(path)]
            except Exception:  # listing is best effort; the missing key is the real error
                present = [k for k in contents if not k.startswith("__")]
            raise _missing_key_error(key, path, present)
        value = contents[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
            raise ValueError(
                f"variable {key!r} in MATLAB file {path!r} is not a numeric array (dtype {getattr(value, 'dtype', type(value))})"
            )
        out[key] = value
    return out


def _load_v73(path: str, keys: list[str]) -> dict[str, np.ndarray]:
    """v7.3 (HDF5) via h5py, transposing each dataset back to MATLAB's axis order."""
    try:
        handle = h5py.File(path, "r")
    except Exception as err:  # a truncated HDF5 file still carries the signature but fails to open
        raise ValueError(f"cannot read MATLAB v7.3 (HDF5) file {path!r}: {err}") from err
    with handle:
        out = {}
        for key in keys:
            # MATLAB writes its bookkeeping (e.g. '#refs#') as top-level groups too; a struct or
            # cell variable is a group, so only a dataset counts as a readable variable here.
            if key not in handle:
                present = [k for k in handle.keys() if not k.startswith("#")]
                raise _missing_key_error(key, path, present)
            node = handle[key]
            if not isinstance(node, h5py.Dataset):
                raise ValueError(
                    f"variable {key!r} in MATLAB file {path!r} is a struct/cell (HDF5 group), not a numeric array"
                )
            try:
                raw = node[()]
            except Exception as err:  # damaged chunks surface only when the data is read
                raise ValueError(f"cannot read variable {key!r} from MATLAB file {path!r}: {err}") from err
            raw = np.asarray(raw)
            if raw.dtype.names is not None and set(raw.dtype.names) == {"real", "imag"}:
                # MATLAB stores complex arrays as a compound {real, imag}.
                raw = raw["real"] + 1j * raw["imag"]
            if raw.dtype.kind not in "biufc":
                raise ValueError(
                    f"variable {key!r} in MATLAB file {path!r} is not a numeric array (dtype {raw.dtype})"
                )
            # Column-major on disk -> reverse all axes; copy so the result is C-contiguous.
            out[key] = np.ascontiguousarray(raw.T)
    return out

"""Reading named arrays from a ``.npz`` file with errors that name the file."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np


def load_arrays(path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The ``required`` arrays, and those of ``optional`` the file holds, in one read.

    Pickled entries are never touched (``allow_pickle=False``). A missing required array or an
    unreadable file is a ValueError naming the file (and the arrays present).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            present = set(data.files)
            missing = [k for k in required if k not in present]
            if missing:
                raise KeyError(f"{path}: no array(s) {missing}; arrays present: {sorted(present)}")
            return {k: data[k] for k in [*required, *optional] if k in present}
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err

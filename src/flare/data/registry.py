"""Dataset registry: how each dataset is generated, fetched and converted to the standard format.

A dataset is one module that knows its files plus one entry here: a :class:`DatasetSpec` whose
``prepare(raw_dir, out_dir, options)`` converts the raw files found under ``raw_dir`` into
``out_dir/{train,test}.h5``, and, where an embedded solver exists, ``generate(raw_dir, options)``.
``options`` is the dataset's entry of the workflow config (``source``, ``local_dir``, ``variant``
and ``kind`` removed). Published copies are listed in :mod:`flare.data.sources`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

Options = Mapping[str, Any]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    prepare: Callable[[Path, Path, Options], Any]
    generate: Callable[[Path, Options], Any] | None = None
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def locate(raw_dir: str | Path, names: list[str]) -> Path:
    """The folder under ``raw_dir`` (any depth) that holds every file in ``names``.

    Downloads keep their archive's layout and local folders are the user's, so files are found by
    name; a missing or ambiguous file is an error naming it.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw data folder {raw_dir} does not exist")
    folders = []
    for name in names:
        hits = sorted(p.parent for p in raw_dir.rglob(name) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{name} not found under {raw_dir}")
        if len(hits) > 1:
            raise ValueError(f"{name} found more than once under {raw_dir}: {', '.join(map(str, hits))}")
        folders.append(hits[0])
    if len(set(folders)) != 1:
        raise ValueError(f"the files {names} lie in different folders under {raw_dir}")
    return folders[0]


def _splits(options: Options, train: int = 1000, test: int = 200) -> dict[str, int]:
    return {"num_train": options.get("num_train", train), "num_test": options.get("num_test", test)}


# -- the paper's datasets ------------------------------------------------------------------------
def _darcy_files(options: Options) -> list[str]:
    from flare.data import darcy

    r, s = options.get("resolution", 421), options.get("samples_per_file", 1024)
    return [darcy.mat_filename(r, s, 1), darcy.mat_filename(r, s, 2)]


def _darcy_generate(raw_dir: Path, options: Options) -> list[Path]:
    from flare.data import darcy

    raw_dir.mkdir(parents=True, exist_ok=True)
    r, s = options.get("resolution", 421), options.get("samples_per_file", 1024)
    paths = []
    for smooth, name in enumerate(_darcy_files(options), start=1):
        darcy.generate_file(raw_dir / name, r, s, options.get("seed", 0) + smooth,
                            workers=options.get("workers", 1))
        paths.append(raw_dir / name)
    return paths


def _darcy_prepare(raw_dir: Path, out_dir: Path, options: Options):
    from flare.data import darcy

    names = _darcy_files(options)
    folder = locate(raw_dir, names)
    return darcy.prepare(folder / names[0], folder / names[1], out_dir, options.get("subsample", 5),
                         **_splits(options))


def _elasticity_generate(raw_dir: Path, options: Options):
    from flare.data import elasticity

    return elasticity.generate_files(raw_dir, options.get("samples", 1200), options.get("seed", 0))


def _elasticity_prepare(raw_dir: Path, out_dir: Path, options: Options):
    from flare.data import elasticity

    folder = locate(raw_dir, [elasticity.SIGMA_FILE, elasticity.XY_FILE])
    return elasticity.prepare(folder, out_dir, **_splits(options))


def _grid_prepare(module_name: str) -> Callable[[Path, Path, Options], Any]:
    def prepare(raw_dir: Path, out_dir: Path, options: Options):
        import importlib

        module = importlib.import_module(f"flare.data.{module_name}")
        folder = locate(raw_dir, [module.X_FILE, module.Y_FILE, module.Q_FILE])
        return module.prepare(folder, out_dir, **_splits(options))

    return prepare


def _drivaerml_prepare(raw_dir: Path, out_dir: Path, options: Options):
    from flare.data import drivaerml

    return drivaerml.prepare(raw_dir, out_dir)


def _lpbf_prepare(raw_dir: Path, out_dir: Path, options: Options):
    from flare.data import lpbf_published

    return lpbf_published.prepare(raw_dir, out_dir)


def _meshfolder_prepare(raw_dir: Path, out_dir: Path, options: Options):
    from flare.data import meshfolder

    known = {"inputs", "outputs", "pattern", "coordinates", "test_fraction", "seed", "name", "train_files",
             "test_files", "units", "normalize_inputs"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown mesh-folder option(s) {sorted(unknown)}; allowed: {', '.join(sorted(known))}")
    return meshfolder.prepare(raw_dir, out_dir, **options)


register_dataset(DatasetSpec("darcy", _darcy_prepare, _darcy_generate,
                             "FNO Darcy flow, piecewise-constant permeability (.mat)"))
register_dataset(DatasetSpec("elasticity", _elasticity_prepare, _elasticity_generate,
                             "Geo-FNO unit cell with a void under tension (.npy)"))
register_dataset(DatasetSpec("airfoil", _grid_prepare("airfoil"), None, "Geo-FNO transonic airfoil (.npy)"))
register_dataset(DatasetSpec("pipe", _grid_prepare("pipe"), None, "Geo-FNO pipe flow (.npy)"))
register_dataset(DatasetSpec("drivaerml", _drivaerml_prepare, None, "DrivAerML presampled surface runs (.npz)"))
register_dataset(DatasetSpec("lpbf", _lpbf_prepare, None, "published LPBF samples (.npz + parquet index)"))
register_dataset(DatasetSpec("meshfolder", _meshfolder_prepare, None,
                             "any folder of meshes meshio reads, fields named in the config"))

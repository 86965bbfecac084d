"""The workflow's download -> prepare chain against a Hugging Face stand-in on 127.0.0.1 serving
miniature archives in the published layout; checksums are recorded, then verified."""
import numpy as np
import pytest
import yaml

from flare.data.format import read_split
from flare.data.sources import PDE_SURROGATES
from tests.data.conftest import hub  # noqa: F401  (fixture)
from tests.data.miniatures import drivaerml_tarball, fno_tarball, geo_fno_tarball, npz_bytes, write_tar
from tests.workflow.test_workflow import snakemake

DATASETS = ("elasticity", "darcy", "airfoil", "pipe", "drivaerml", "lpbf")


def lpbf_tarball(path, cases=(("train", 7), ("train", 5), ("train", 6), ("test", 4))):
    """A miniature LPBF.tar.gz: <split>/<case>.npz with node positions, displacements and mesh edges."""
    rng = np.random.default_rng(2)
    members = {}
    for i, (split, n) in enumerate(cases):
        members[f"LPBF/{split}/case{i:05d}_part.npz"] = npz_bytes(
            pos=(rng.random((n, 3)) * [30, 30, 60]).astype(np.float32),
            disp=rng.normal(0, 0.1, (n, 3)).astype(np.float32),
            edge_index=np.stack([np.arange(n - 1), np.arange(1, n)]).astype(np.int64),
        )
    write_tar(path, members)


@pytest.fixture
def served(hub, tmp_path):  # noqa: F811
    archives = tmp_path / "archives"
    archives.mkdir()
    geo_fno_tarball(archives / "Geo-FNO.tar.gz", samples=5)
    fno_tarball(archives / "FNO.tar.gz", samples=3, resolution=9)
    drivaerml_tarball(archives / "drivaerml_surface_presampled_40k.tar.gz")
    lpbf_tarball(archives / "LPBF.tar.gz")
    for archive in archives.iterdir():
        hub.serve_hf(PDE_SURROGATES, archive.name, archive.read_bytes())
    return hub


def chain_config(path, base_url, checksums):
    config = {
        "datasets": {
            "elasticity": {"source": "download", "num_train": 3, "num_test": 2},
            "darcy": {"source": "download", "subsample": 2, "num_train": 3, "num_test": 3},
            "airfoil": {"source": "download", "num_train": 3, "num_test": 2},
            "pipe": {"source": "download", "num_train": 3, "num_test": 2},
            "drivaerml": {"source": "download", "variant": "40k"},
            "lpbf": {"source": "download"},
        },
        "download": {"base_url": base_url, "checksums": str(checksums)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_download_prepare_chain_with_recorded_then_verified_checksums(served, tmp_path):
    work, checksums = tmp_path / "work", tmp_path / "checksums.yaml"
    config = chain_config(tmp_path / "chain.yaml", served.base_url, checksums)
    targets = [f"results/datasets/{d}/{split}.h5" for d in DATASETS for split in ("train", "test")]
    snakemake(work, *targets, "--cores", "2", "--configfile", str(config))

    shapes = {"elasticity": (972, 2, 1), "darcy": (25, 3, 1), "airfoil": (55, 2, 1), "pipe": (81, 2, 1)}
    for name, (points, c_in, c_out) in shapes.items():
        train = read_split(work / f"results/datasets/{name}/train.h5")
        assert train.meta.name == name and train.x.shape == (3 * points, c_in) and train.y.shape[1] == c_out
    drivaerml = read_split(work / "results/datasets/drivaerml/test.h5")
    assert len(drivaerml) == 1 and drivaerml.x.shape == (16, 3)
    lpbf = read_split(work / "results/datasets/lpbf/train.h5")
    assert len(lpbf) == 3 and lpbf.x.shape == (18, 3) and lpbf.edges is not None  # mesh edges kept
    recorded = yaml.safe_load(checksums.read_text())
    assert len(recorded) == 4 and all(len(h) == 64 for h in recorded.values())
    assert served.count(f"/datasets/{PDE_SURROGATES}/resolve/main/Geo-FNO.tar.gz") == 1  # shared, cached

    # A tampered cache is caught on the next use; the converted dataset stays as it was.
    archive = next((work / "resources/hub").rglob("Geo-FNO.tar.gz"))
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    (work / "resources/pipe/download.json").unlink()
    result = snakemake(work, "resources/pipe/download.json", "--cores", "1", "--configfile", str(config),
                       check=False)
    assert result.returncode != 0
    log = (work / "results/logs/data/download_pipe.log").read_text()
    assert "Geo-FNO.tar.gz" in log and "sha256" in log
    assert np.isfinite(read_split(work / "results/datasets/pipe/train.h5").x).all()  # the old output is intact

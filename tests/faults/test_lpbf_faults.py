"""Bad raw LPBF cases (SPEC §5; real EnSight Gold files): each is excluded with its reason and the
rest of the batch goes on through extraction and filtering."""
import numpy as np
import pandas as pd

from flare.am.cases import COMPLETED_LINE, LOG_NAME
from flare.am.ensight import write_case
from flare.am.extract import extract_cases
from flare.am.filter import filter_cases
from flare.am.sdf import hex_grid


def write_raw_case(sandbox, name, points, cells):
    """A finished case in the raw layout: log, geometry and two time steps of every field."""
    folder = sandbox / name
    n = len(points)
    z = points[:, 2] / max(points[:, 2].max(), 1.0)
    steps = []
    for scale in (0.5, 1.0):
        displacement = np.zeros((n, 3))
        displacement[:, 2] = -0.01 * scale * z
        steps.append({"displacement": displacement, "strain": np.full((n, 6), 1e-4 * scale),
                      "stress": np.full((n, 6), 10.0 * scale), "von_mises": np.full(n, 20.0 * scale),
                      "temperature": np.full(n, 25.0)})
    write_case(folder / "results", name, points, cells, [60.0, 120.0], steps)
    (folder / LOG_NAME).write_text(f"case {name}\n{COMPLETED_LINE}\n")


def block(shape=(3, 2, 2)):
    return hex_grid(np.ones(shape, dtype=bool), spacing=(2.5, 2.5, 2.5))


def test_bad_cells_and_a_leaky_surface_are_excluded_and_the_batch_goes_on(tmp_path):
    sandbox = tmp_path / "SandBox"
    for name in ("case00000", "case00002", "case00004"):
        write_raw_case(sandbox, name, *block())

    points, cells = block()
    inverted = cells.copy()
    inverted[2] = inverted[2][[4, 5, 6, 7, 0, 1, 2, 3]]  # top and bottom quads swapped
    write_raw_case(sandbox, "case00001", points, inverted)

    points, cells = block()
    collapsed = points.copy()
    collapsed[cells[1, 6]] = collapsed[cells[1, 2]]  # a top corner dropped onto the one below it
    write_raw_case(sandbox, "case00003", collapsed, cells)

    mask = np.zeros((2, 2, 1), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True  # two cubes that touch along one vertical edge only
    write_raw_case(sandbox, "case00005", *hex_grid(mask, spacing=(2.5, 2.5, 2.5)))

    table = extract_cases(sandbox, tmp_path / "extracted", tmp_path / "extract.csv", progress=False)
    reasons = dict(zip(table["case"], table["reason"].fillna("")))
    assert reasons["case00001"] == "bad_cells" and reasons["case00003"] == "bad_cells"
    details = dict(zip(table["case"], table["detail"].fillna("")))
    assert "cell 2" in details["case00001"] and "cell 1" in details["case00003"]
    assert set(table.loc[table["status"] == "accepted", "case"]) == {"case00000", "case00002", "case00004",
                                                                     "case00005"}

    stats = filter_cases(tmp_path / "extracted", tmp_path / "extract.csv", tmp_path / "filter")
    assert (tmp_path / "filter/kept.txt").read_text().split() == ["case00000", "case00002", "case00004"]
    assert not bool(stats.set_index("case").loc["case00005", "watertight"])
    excluded = pd.read_csv(tmp_path / "filter/excluded.csv").set_index("case")
    assert excluded.loc["case00005", "reason"] == "surface_not_watertight"
    assert excluded.loc["case00005", "stage"] == "filter"
    assert excluded.loc[["case00001", "case00003"], "reason"].tolist() == ["bad_cells", "bad_cells"]
    assert (excluded.loc[["case00001", "case00003"], "stage"] == "extract").all()

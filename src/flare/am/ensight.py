"""EnSight Gold results of an LPBF case: the C Binary writer and a VTK-backed reader (SPEC §5).

The layout is that of a Netfabb mechanical run, ``<results>/<case>_mechanical.*``:

* ``<case>_mechanical.geo``: the static geometry, one part of hexa8 cells. C Binary: 80-byte text
  records, int32 counts and 1-based connectivity, float32 coordinates as an x, a y and a z block.
* ``<case>_mechanical.<var>.<NNNN>``: one per-node variable at one time step (NNNN from 0001),
  its components as float32 blocks, one after the other.
* ``<case>_mechanical.case``: the ASCII index naming the files above and the time values. It is
  written last, so its presence means that every file it names was written.

Numbers are written little-endian (C Binary files carry no byte-order mark). Variables are
per node: ``displacement`` (vector, mm), ``strain`` (tensor symm), ``stress`` (tensor symm, MPa),
``von_mises`` and ``temperature`` (scalars, MPa and deg C). In Python a symmetric tensor is Voigt
``[xx, yy, zz, yz, xz, xy]``; an EnSight "tensor symm" file holds ``11 22 33 12 13 23``, and VTK's
reader hands the components over as ``XX YY ZZ XY YZ XZ``; the converters below map each order.

:func:`read_case` reads through VTK's EnSight reader (via pyvista) only; :func:`parse_case_file`
reads the ASCII ``.case`` index so that callers can check the files it names before VTK does.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Variable name -> (EnSight variable type, number of components).
VARIABLES = {
    "displacement": ("vector", 3),
    "strain": ("tensor symm", 6),
    "stress": ("tensor symm", 6),
    "von_mises": ("scalar", 1),
    "temperature": ("scalar", 1),
}

# EnSight tensor symm component k is Voigt component VOIGT_TO_ENSIGHT[k]: 11 22 33 12 13 23 from
# [xx, yy, zz, yz, xz, xy]. The permutation is its own inverse.
VOIGT_TO_ENSIGHT = np.array([0, 1, 2, 5, 4, 3])
ENSIGHT_TO_VOIGT = VOIGT_TO_ENSIGHT
# VTK's EnSight reader reorders a tensor symm to XX YY ZZ XY YZ XZ; Voigt k is VTK column k here.
VTK_TO_VOIGT = np.array([0, 1, 2, 4, 5, 3])

VTK_HEXAHEDRON = 12
RECORD = 80  # bytes of a C Binary text record
MAX_STEPS = 9999  # the 4-digit `****` wildcard
TIMES_PER_LINE = 5  # VTK reads .case lines of at most 256 characters
CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def voigt_to_ensight(voigt: np.ndarray) -> np.ndarray:
    """[..., 6] Voigt ``[xx, yy, zz, yz, xz, xy]`` -> [..., 6] EnSight ``11 22 33 12 13 23``."""
    return np.asarray(voigt)[..., VOIGT_TO_ENSIGHT]


def ensight_to_voigt(ensight: np.ndarray) -> np.ndarray:
    """[..., 6] EnSight ``11 22 33 12 13 23`` -> [..., 6] Voigt ``[xx, yy, zz, yz, xz, xy]``."""
    return np.asarray(ensight)[..., ENSIGHT_TO_VOIGT]


def results_prefix(case_name: str) -> str:
    """The stem shared by a case's result files: ``<case>_mechanical``."""
    return f"{case_name}_mechanical"


# ----------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _record(text: str) -> bytes:
    """One 80-byte C Binary text record (ASCII, zero padded)."""
    encoded = text.encode("ascii")
    if len(encoded) >= RECORD:
        raise ValueError(f"EnSight text record longer than {RECORD - 1} characters: {text!r}")
    return encoded.ljust(RECORD, b"\0")


def _int32(*values: int) -> bytes:
    return np.asarray(values, dtype="<i4").tobytes()


def _float_blocks(values: np.ndarray) -> bytes:
    """[N, K] values as K consecutive little-endian float32 blocks of N values."""
    return np.ascontiguousarray(np.asarray(values, dtype="<f4").T).tobytes()


def geometry_bytes(
    case_name: str, points: np.ndarray, element_blocks: dict[str, np.ndarray]
) -> bytes:
    """C Binary geometry of one part.

    points: [N, 3] mm; element_blocks: EnSight element type (``"hexa8"``, ``"tetra4"``, ...) ->
    [C, K] 0-based node indices (written 1-based). Writers other than :func:`write_case` use this
    to build files with other element types (a test of the reader's cell checks does).
    """
    parts = [
        _record("C Binary"),
        _record(f"LPBF case {case_name}"),
        _record("mechanical results, mm"),
        _record("node id off"),
        _record("element id off"),
        _record("part"),
        _int32(1),
        _record("part"),
        _record("coordinates"),
        _int32(len(points)),
        _float_blocks(points),
    ]
    for element_type, connectivity in element_blocks.items():
        connectivity = np.asarray(connectivity)
        parts += [
            _record(element_type),
            _int32(len(connectivity)),
            np.ascontiguousarray(connectivity + 1, dtype="<i4").tobytes(),
        ]
    return b"".join(parts)


def variable_bytes(description: str, values: np.ndarray) -> bytes:
    """C Binary per-node variable of part 1: values [N] or [N, K], components in file order."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    return b"".join(
        [
            _record(description),
            _record("part"),
            _int32(1),
            _record("coordinates"),
            _float_blocks(values),
        ]
    )


def _format_times(times: np.ndarray) -> str:
    lines = []
    for start in range(0, len(times), TIMES_PER_LINE):
        lines.append(" ".join(f"{t:.9g}" for t in times[start : start + TIMES_PER_LINE]))
    return "\n".join(lines)


def case_text(case_name: str, variables: list[str], times: np.ndarray) -> str:
    """The ASCII ``.case`` index of a case's geometry, per-node variables and time steps."""
    prefix = results_prefix(case_name)
    lines = ["FORMAT", "type: ensight gold", "", "GEOMETRY", f"model: {prefix}.geo", ""]
    if variables:
        lines.append("VARIABLE")
        for name in variables:
            kind, _ = VARIABLES[name]
            lines.append(f"{kind} per node: 1 {name} {prefix}.{name}.****")
        lines.append("")
    lines += [
        "TIME",
        "time set: 1",
        f"number of steps: {len(times)}",
        "filename start number: 1",
        "filename increment: 1",
        "time values:",
        _format_times(times),
        "",
    ]
    return "\n".join(lines)


def _check_case_name(case_name: str) -> None:
    if not isinstance(case_name, str) or not CASE_NAME.fullmatch(case_name):
        raise ValueError(
            f"case name {case_name!r} must be letters, digits and _ . + - (no spaces or slashes), "
            "starting with a letter or digit"
        )


def _check_mesh(points, cells) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must have shape [N, 3] with N > 0, got {points.shape}")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"points must be numeric, got dtype {points.dtype}")
    if not np.isfinite(points.astype(np.float32)).all():
        raise ValueError("points hold NaN or infinite coordinates (or values beyond float32)")
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 8 or len(cells) == 0:
        raise ValueError(
            f"cells must be hexa8 connectivity of shape [C, 8], C > 0, got {cells.shape}"
        )
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must hold integer node indices, got dtype {cells.dtype}")
    if cells.min() < 0 or cells.max() >= len(points):
        raise ValueError(
            f"cells refer to nodes outside [0, {len(points)}): min {cells.min()}, max {cells.max()}"
        )
    return points, cells


def _check_times(times) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or not 1 <= len(times) <= MAX_STEPS:
        raise ValueError(
            f"times must be a list of 1 to {MAX_STEPS} values, got shape {times.shape}"
        )
    if not np.isfinite(times).all():
        raise ValueError("times hold NaN or infinite values")
    if (np.diff(times) <= 0).any():
        first = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise ValueError(
            f"times must be strictly increasing: times[{first}] = {times[first]} is followed by "
            f"{times[first + 1]}"
        )
    return times


def _check_steps(steps, n_steps: int, n_points: int) -> list[str]:
    """The variable names of the steps (in VARIABLES order), after checking every array."""
    if len(steps) != n_steps:
        raise ValueError(f"got {len(steps)} steps for {n_steps} time values; give one per time")
    names = set(steps[0]) if n_steps else set()
    unknown = names - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown variables {sorted(unknown)}; known: {list(VARIABLES)}")
    for index, step in enumerate(steps):
        if set(step) != names:
            raise ValueError(
                f"step {index} holds variables {sorted(step)}, step 0 holds {sorted(names)}; every "
                "step must hold the same variables"
            )
        for name, values in step.items():
            _, components = VARIABLES[name]
            shape = (n_points,) if components == 1 else (n_points, components)
            values = np.asarray(values)
            if values.shape != shape:
                raise ValueError(
                    f"step {index}: {name} must have shape {list(shape)}, got {list(values.shape)}"
                )
            if not np.issubdtype(values.dtype, np.number):
                raise ValueError(f"step {index}: {name} must be numeric, got dtype {values.dtype}")
            if not np.isfinite(values.astype(np.float32)).all():
                raise ValueError(
                    f"step {index}: {name} holds NaN or infinite values (or values beyond float32)"
                )
    return [name for name in VARIABLES if name in names]


def write_case(results_dir, case_name: str, points, cells, times, steps) -> Path:
    """Write a case's geometry and per-node results as EnSight Gold (C Binary); return the .case.

    results_dir: the folder to write into (created if needed); case_name: the case's name (files
    are ``<case_name>_mechanical.*``); points: [N, 3] mm; cells: [C, 8] 0-based VTK hexa8
    connectivity (orientation is not checked); times: [K] strictly increasing; steps: K dicts, one
    per time, each mapping the same subset of ``displacement`` [N, 3] mm, ``strain`` [N, 6] Voigt,
    ``stress`` [N, 6] Voigt MPa, ``von_mises`` [N] MPa, ``temperature`` [N] deg C to its values.
    Values are stored as float32; they must be finite there. An existing .case is removed first
    and the new one written last, so a .case only ever names files that are complete.
    """
    _check_case_name(case_name)
    points, cells = _check_mesh(points, cells)
    times = _check_times(times)
    steps = list(steps)
    names = _check_steps(steps, len(times), len(points))

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    prefix = results_prefix(case_name)
    case_file = results_dir / f"{prefix}.case"
    case_file.unlink(missing_ok=True)  # an older index must not vouch for files being rewritten
    geometry = geometry_bytes(case_name, points, {"hexa8": cells})
    _atomic_write(results_dir / f"{prefix}.geo", geometry)
    for index, (time, step) in enumerate(zip(times, steps), start=1):
        for name in names:
            values = np.asarray(step[name])
            if VARIABLES[name][0] == "tensor symm":
                values = voigt_to_ensight(values)
            description = f"{name} step {index} time {time:.9g}"
            _atomic_write(
                results_dir / f"{prefix}.{name}.{index:04d}", variable_bytes(description, values)
            )
    _atomic_write(case_file, case_text(case_name, names, times).encode("ascii"))
    return case_file


# ----------------------------------------------------------------------------- the .case index


@dataclass
class TimeSet:
    """One TIME-section time set: its values and the numbers that replace a file name's ``*``s."""

    number_of_steps: int
    values: np.ndarray  # [K] as written in the file
    file_numbers: list[int] = field(default_factory=list)  # [K]


@dataclass
class CaseIndex:
    """What an EnSight Gold ``.case`` file names: geometry, per-node variables, time sets.

    ``variables`` maps a variable's description to (EnSight type, file name pattern, time set or
    None); ``time_sets`` maps a time set's number to its :class:`TimeSet`. Paths are relative to
    ``folder``.
    """

    path: Path
    geometry: str
    variables: dict[str, tuple[str, str, int | None]]
    time_sets: dict[int, TimeSet]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def files_of(self, pattern: str, time_set: int | None) -> list[Path]:
        """The files a name pattern stands for: one per step of its time set (``*`` -> number)."""
        stars = re.search(r"\*+", pattern)
        if stars is None or time_set is None:
            return [self.folder / pattern]
        width = stars.end() - stars.start()
        return [
            self.folder / (pattern[: stars.start()] + f"{number:0{width}d}" + pattern[stars.end():])
            for number in self.time_sets[time_set].file_numbers
        ]


SECTIONS = ("FORMAT", "GEOMETRY", "VARIABLE", "TIME", "FILE", "MATERIAL", "BLOCK_CONTINUATION")
VARIABLE_LINE = re.compile(r"^(?P<kind>[a-z ]+?) per (?P<where>node|element)\s*:\s*(?P<rest>.+)$")


def _split_set_numbers(tokens: list[str]) -> tuple[list[int], list[str]]:
    """Leading integer tokens (time set, file set) and the rest."""
    numbers = []
    while tokens and re.fullmatch(r"\d+", tokens[0]):
        numbers.append(int(tokens.pop(0)))
    return numbers, tokens


def parse_case_file(case_file) -> CaseIndex:
    """Parse an EnSight Gold ``.case`` file (ASCII) into a :class:`CaseIndex`.

    Raises ValueError naming the file and line for what it cannot follow: no ``ensight gold``
    type, no geometry model, a malformed variable or TIME line, a time value that is not a number,
    or a variable on an undefined time set. It does not check the counts (see
    :func:`time_set_problems`) nor that the files exist.
    """
    path = Path(case_file)
    text = path.read_text(encoding="ascii", errors="replace")
    section = None
    gold = False
    geometry = None
    variables: dict[str, tuple[str, str, int | None]] = {}
    raw_sets: dict[int, dict[str, list[str]]] = {}
    current_set: dict[str, list[str]] | None = None
    current_key = None

    def fail(number: int, message: str) -> ValueError:
        return ValueError(f"{path}: line {number}: {message}")

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.upper() in SECTIONS:
            section, current_key = line.upper(), None
            continue
        if section == "FORMAT":
            key, _, value = line.partition(":")
            if key.strip().lower() == "type":
                gold = value.strip().lower() == "ensight gold"
        elif section == "GEOMETRY":
            key, _, value = line.partition(":")
            if key.strip().lower() == "model":
                _, tokens = _split_set_numbers(value.split())
                if not tokens:
                    raise fail(number, "the geometry model names no file")
                geometry = tokens[0]
        elif section == "VARIABLE":
            match = VARIABLE_LINE.match(line)
            if match is None:
                raise fail(number, f"cannot read the variable line {line!r}")
            numbers, tokens = _split_set_numbers(match["rest"].split())
            if len(tokens) != 2:
                raise fail(number, f"expected '<description> <file>' after set numbers: {line!r}")
            kind = f"{match['kind'].strip()} per {match['where']}"
            variables[tokens[0]] = (kind, tokens[1], numbers[0] if numbers else None)
        elif section == "TIME":
            key, colon, value = line.partition(":")
            if colon:
                key = key.strip().lower()
                if key == "time set":
                    numbers, _ = _split_set_numbers(value.split())
                    if not numbers:
                        raise fail(number, f"time set needs a number: {line!r}")
                    current_set = raw_sets.setdefault(numbers[0], {})
                    current_key = None
                    continue
                if current_set is None:
                    raise fail(number, f"{key!r} before any 'time set:' line")
                current_key = key
                current_set[key] = value.split()
            elif current_set is not None and current_key in ("time values", "filename numbers"):
                current_set[current_key] += line.split()  # a list continued on the next line
            else:
                raise fail(number, f"cannot read the TIME line {line!r}")
    if not gold:
        raise ValueError(f"{path}: no 'type: ensight gold' in the FORMAT section")
    if geometry is None:
        raise ValueError(f"{path}: no 'model:' line in the GEOMETRY section")

    time_sets = {}
    for set_number, entries in raw_sets.items():
        try:
            steps = int(entries.get("number of steps", ["0"])[0])
            values = np.array([float(v) for v in entries.get("time values", [])], dtype=np.float64)
            if "filename numbers" in entries:
                file_numbers = [int(v) for v in entries["filename numbers"]]
            else:
                start = int(entries.get("filename start number", ["0"])[0])
                increment = int(entries.get("filename increment", ["1"])[0])
                file_numbers = [start + k * increment for k in range(steps)]
        except ValueError as error:
            raise ValueError(f"{path}: time set {set_number}: not a number ({error})") from None
        time_sets[set_number] = TimeSet(steps, values, file_numbers)
    for name, (_, _, set_number) in variables.items():
        if set_number is not None and set_number not in time_sets:
            raise ValueError(f"{path}: variable {name} uses time set {set_number}, never defined")
    return CaseIndex(path, geometry, variables, time_sets)


def time_set_problems(index: CaseIndex) -> list[str]:
    """Sentences naming what is inconsistent in the time sets of a case (empty when none is).

    A time set must list as many time values and file numbers as its number of steps (at least
    one), and its time values must increase strictly.
    """
    problems = []
    for number, time_set in sorted(index.time_sets.items()):
        name = f"time set {number}"
        if time_set.number_of_steps < 1:
            problems.append(f"{name} has {time_set.number_of_steps} steps")
        if len(time_set.values) != time_set.number_of_steps:
            problems.append(
                f"{name} lists {len(time_set.values)} time values for "
                f"{time_set.number_of_steps} steps"
            )
        if len(time_set.file_numbers) != time_set.number_of_steps:
            problems.append(
                f"{name} lists {len(time_set.file_numbers)} file numbers for "
                f"{time_set.number_of_steps} steps"
            )
        values = time_set.values
        if not np.isfinite(values).all():
            problems.append(f"{name}: a time value is not a finite number")
        else:
            drops = np.flatnonzero(np.diff(values) <= 0)
            if drops.size:
                k = int(drops[0])
                problems.append(
                    f"{name}: time values are not strictly increasing (value {k + 1} is "
                    f"{values[k]:.9g}, value {k + 2} is {values[k + 1]:.9g})"
                )
    return problems


# ----------------------------------------------------------------------------- reading


def _cells_of(grid) -> tuple[np.ndarray, np.ndarray]:
    """([C, 8] hexahedron node ids, -1 rows for other cells; [C] VTK cell types) of a grid."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    cell_types = np.asarray(grid.celltypes, dtype=np.uint8)
    cell_array = grid.GetCells()
    connectivity = vtk_to_numpy(cell_array.GetConnectivityArray()).astype(np.int64)
    offsets = vtk_to_numpy(cell_array.GetOffsetsArray()).astype(np.int64)
    cells = np.full((len(cell_types), 8), -1, dtype=np.int64)
    hexahedra = (cell_types == VTK_HEXAHEDRON) & (np.diff(offsets) == 8)
    cells[hexahedra] = connectivity[offsets[:-1][hexahedra, None] + np.arange(8)]
    return cells, cell_types


def _to_our_convention(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    kind = VARIABLES[name][0]
    if kind == "tensor symm":
        if values.ndim != 2 or values.shape[1] != 6:
            raise ValueError(f"{name} has shape {values.shape} from VTK, expected [N, 6]")
        return values[:, VTK_TO_VOIGT]
    return values


@contextlib.contextmanager
def _quiet_vtk_log():
    """Keep VTK's logger off stderr for a while: its errors reach us as exceptions instead."""
    from vtkmodules.vtkCommonCore import vtkLogger

    previous = vtkLogger.GetCurrentVerbosityCutoff()
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)
    try:
        yield
    finally:
        vtkLogger.SetStderrVerbosity(previous)


def read_case(case_file, step: int = -1) -> dict:
    """Read one time step of an EnSight Gold case through VTK's EnSight reader (pyvista).

    case_file: the ``.case`` file; step: index into the time values (negative counts from the
    end). Returns a dict: ``times`` [K] float64 (as VTK parsed them), ``step`` (the 0-based index
    read), ``time`` (its value), ``points`` [N, 3] float64 mm in file order, ``cells`` [C, 8] int64
    0-based VTK hexa8 connectivity in file order (rows of cells that are not hexahedra hold -1),
    ``cell_types`` [C] uint8 VTK cell types, and each known variable the case holds, as float64 in
    our conventions: ``displacement`` [N, 3], ``strain`` / ``stress`` [N, 6] Voigt
    ``[xx, yy, zz, yz, xz, xy]``, ``von_mises`` / ``temperature`` [N]. Other arrays are ignored.

    Raises FileNotFoundError for a missing .case, IndexError for a step out of range,
    ValueError for a .case that :func:`parse_case_file` cannot follow or whose time sets are
    inconsistent (:func:`time_set_problems`; VTK would crash or read the wrong files) and for a
    case without exactly one part, and pyvista.VTKExecutionError (a
    RuntimeError) when VTK reports an error while reading.
    """
    import pyvista as pv  # VTK loads in a second or two; only readers pay for it

    case_file = Path(case_file)
    if not case_file.is_file():
        raise FileNotFoundError(f"{case_file}: no such EnSight case file")
    # VTK reads past the time values it was promised (a crash) and picks files by sorted time, so
    # a time set it cannot follow is refused here.
    problems = time_set_problems(parse_case_file(case_file))
    if problems:
        raise ValueError(f"{case_file}: " + "; ".join(problems))
    with _quiet_vtk_log(), pv.VtkErrorCatcher(raise_errors=True, send_to_logging=False):
        reader = pv.get_reader(str(case_file))
        times = np.asarray(reader.time_values, dtype=np.float64)
        if len(times):
            if not -len(times) <= step < len(times):
                raise IndexError(
                    f"{case_file}: step {step} out of range for {len(times)} time steps"
                )
            step = step % len(times)
            reader.set_active_time_point(step)
        elif step not in (0, -1):
            raise IndexError(f"{case_file}: step {step} asked of a case without time steps")
        else:
            step = 0
        reader.enable_all_point_arrays()
        blocks = reader.read()
    parts = [blocks[i] for i in range(blocks.n_blocks) if blocks[i] is not None]
    if len(parts) != 1:
        raise ValueError(f"{case_file}: expected one part, the reader found {len(parts)}")
    grid = parts[0]
    cells, cell_types = _cells_of(grid)
    result = {
        "times": times,
        "step": int(step),
        "time": float(times[step]) if len(times) else float("nan"),
        "points": np.asarray(grid.points, dtype=np.float64),
        "cells": cells,
        "cell_types": cell_types,
    }
    for name in VARIABLES:
        if name in grid.point_data:
            result[name] = _to_our_convention(name, grid.point_data[name])
    return result

"""Dataset download machinery against a local server: verification, caching, retries, resume,
safe extraction and the source registry. Only 127.0.0.1 is contacted."""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from flare.data import darcy
from flare.data.archive import MissingMembersError, UnsafeArchiveError, archive_stem, safe_extract
from flare.data.download import (
    ChecksumMismatchError,
    DownloadError,
    RemoteFileNotFoundError,
    fetch,
    fetch_with_sha256,
    partial_path,
)
from flare.data.sources import (
    DEFAULT_BASE_URL,
    PDE_SURROGATES,
    SOURCES,
    ChecksumConflictError,
    download_source,
    load_checksums,
    record_checksum,
    select_files,
)
from tests.data.miniatures import (
    HOSTILE_TAR_KINDS,
    HOSTILE_ZIP_KINDS,
    drivaerml_tarball,
    fno_tarball,
    geo_fno_tarball,
    hostile_tar,
    hostile_zip,
    write_tar,
    write_zip,
)

FAST = dict(progress=False, backoff=0.01, timeout=5)
BODY = bytes(range(256)) * 1024  # 256 KiB: a cut at half falls on a 64 KiB chunk boundary


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder):
    """Names in ``folder`` other than lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


# --- fetch -------------------------------------------------------------------------------------

def test_good_download_is_verified_then_served_from_the_cache(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = tmp_path / "f.bin"
    assert fetch(url, dest, sha(BODY), **FAST) == dest
    assert dest.read_bytes() == BODY
    assert fetch(url, dest, sha(BODY).upper(), **FAST) == dest  # cached: no second request
    assert hub.count(url) == 1
    assert leftovers(tmp_path) == ["f.bin"]


def test_progress_bar_names_the_file(hub, tmp_path, capfd):
    url = hub.serve("/f.bin", BODY)
    fetch(url, tmp_path / "f.bin", sha(BODY), progress=True, backoff=0.01, timeout=5)
    assert "f.bin" in capfd.readouterr().err


def test_parallel_fetches_of_one_file_download_it_once(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: fetch(url, tmp_path / "f.bin", sha(BODY), **FAST), range(4)))
    assert all(p.read_bytes() == BODY for p in paths)
    assert hub.count(url) == 1


def test_download_without_a_known_hash_returns_the_computed_one(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    path, digest = fetch_with_sha256(url, tmp_path / "f.bin", None, **FAST)
    assert digest == sha(BODY) and path.read_bytes() == BODY


def test_wrong_checksum_names_the_file_and_both_hashes_and_keeps_nothing(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = tmp_path / "f.bin"
    wrong = sha(b"something else")
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(url, dest, wrong, **FAST)
    message = str(err.value)
    assert str(dest) in message and wrong in message and sha(BODY) in message
    assert leftovers(tmp_path) == []  # neither dest nor a partial file


def test_tampered_cached_file_is_caught_without_contacting_the_server(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = fetch(url, tmp_path / "f.bin", sha(BODY), **FAST)
    dest.write_bytes(BODY[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatchError, match="f.bin") as err:
        fetch(url, dest, sha(BODY), **FAST)
    assert sha(BODY) in str(err.value) and sha(dest.read_bytes()) in str(err.value)
    assert hub.count(url) == 1


def test_truncated_body_fails_after_bounded_retries_with_no_file_at_dest(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "truncate")  # ignores Range: every attempt comes up short
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="after 3 attempt") as err:
        fetch(url, dest, sha(BODY), retries=2, **FAST)
    assert url in str(err.value)
    assert hub.count(url) == 3
    assert not dest.exists()
    assert partial_path(dest).stat().st_size == len(BODY) // 2  # kept for a later resume


def test_404_is_not_retried_and_names_the_url(hub, tmp_path):
    url = hub.base_url + "/missing.tar.gz"
    with pytest.raises(RemoteFileNotFoundError, match="404") as err:
        fetch(url, tmp_path / "missing.tar.gz", None, retries=3, **FAST)
    assert url in str(err.value)
    assert hub.count(url) == 1
    assert leftovers(tmp_path) == []


def test_server_errors_are_retried_until_the_file_arrives(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "fail_then_ok", failures=2, status=503)
    assert fetch(url, tmp_path / "f.bin", sha(BODY), retries=3, **FAST).read_bytes() == BODY
    assert hub.count(url) == 3


def test_retries_are_bounded_for_persistent_server_errors(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "fail_then_ok", failures=99, status=500)
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch(url, tmp_path / "f.bin", None, retries=1, **FAST)
    assert hub.count(url) == 2


def test_stalling_server_times_out_within_bounded_retries(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "stall", stall_after=100)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="after 2 attempt"):
        fetch(url, tmp_path / "f.bin", sha(BODY), retries=1, timeout=0.5, progress=False, backoff=0.01)
    assert time.monotonic() - start < 10
    assert hub.count(url) == 2
    assert not (tmp_path / "f.bin").exists()


def test_connection_cut_mid_file_is_resumed_with_a_range_request(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "cut_once")
    dest = fetch(url, tmp_path / "f.bin", sha(BODY), retries=2, **FAST)
    assert dest.read_bytes() == BODY
    assert hub.ranges(url) == [None, f"bytes={len(BODY) // 2}-"]
    assert leftovers(tmp_path) == ["f.bin"]


def test_partial_file_of_an_interrupted_run_is_resumed(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(BODY[:1000])
    assert fetch(url, dest, sha(BODY), **FAST).read_bytes() == BODY
    assert hub.ranges(url) == ["bytes=1000-"]


def test_server_ignoring_range_restarts_the_file_from_scratch(hub, tmp_path):
    url = hub.serve("/f.bin", BODY, "ignore_range")
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(b"stale bytes of another attempt")
    assert fetch(url, dest, sha(BODY), **FAST).read_bytes() == BODY
    assert hub.ranges(url) == ["bytes=30-"]


def test_partial_file_that_is_already_complete_is_verified_on_416(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(BODY)
    assert fetch(url, dest, sha(BODY), **FAST).read_bytes() == BODY
    assert hub.ranges(url) == [f"bytes={len(BODY)}-"]


def test_corrupt_partial_file_is_caught_by_the_checksum_and_discarded(hub, tmp_path):
    url = hub.serve("/f.bin", BODY)
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(b"\xff" * 1000)  # right length, wrong bytes
    with pytest.raises(ChecksumMismatchError, match="discarded"):
        fetch(url, dest, sha(BODY), **FAST)
    assert leftovers(tmp_path) == []
    assert fetch(url, dest, sha(BODY), **FAST).read_bytes() == BODY  # next call starts clean


# --- safe extraction ---------------------------------------------------------------------------

def test_tar_gz_is_extracted_completely_into_the_target(tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", {"top/x.txt": b"x", "top/sub/y.txt": b"y"})
    files = safe_extract(archive, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == ["top/x.txt", "top/sub/y.txt"]
    assert (tmp_path / "out/top/sub/y.txt").read_bytes() == b"y"
    assert leftovers(tmp_path) == ["a.tar.gz", "out"]


def test_plain_tar_and_zip_are_extracted(tmp_path):
    tar = write_tar(tmp_path / "a.tar", {"x.txt": b"x"}, compression="")
    zipped = write_zip(tmp_path / "a.zip", {"d/y.txt": b"y"})
    assert [p.read_bytes() for p in safe_extract(tar, tmp_path / "t")] == [b"x"]
    assert [p.read_bytes() for p in safe_extract(zipped, tmp_path / "z")] == [b"y"]


def test_selected_members_are_matched_by_path_suffix_in_the_requested_order(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", {"./A/b/one.npy": b"1", "A/b/two.npy": b"2", "A/c/three.npy": b"3"})
    files = safe_extract(archive, tmp_path / "out", ["b/two.npy", "one.npy"])
    assert [p.read_bytes() for p in files] == [b"2", b"1"]
    assert not (tmp_path / "out/A/c").exists()
    with pytest.raises(MissingMembersError, match="nope.npy"):
        safe_extract(archive, tmp_path / "out2", ["nope.npy"])
    assert not (tmp_path / "out2").exists()


def test_existing_target_is_not_overwritten(tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", {"x.txt": b"x"})
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        safe_extract(archive, tmp_path / "out")


@pytest.mark.parametrize("kind", HOSTILE_TAR_KINDS)
def test_hostile_tar_is_refused_and_nothing_is_extracted(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    archive, member = hostile_tar(work / "evil.tar.gz", kind)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, work / "out")
    assert str(archive) in str(err.value) and member in str(err.value)
    assert leftovers(work) == ["evil.tar.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing escaped either


@pytest.mark.parametrize("kind", HOSTILE_ZIP_KINDS)
def test_hostile_zip_is_refused_and_nothing_is_extracted(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    archive, member = hostile_zip(work / "evil.zip", kind)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, work / "out")
    assert str(archive) in str(err.value) and member in str(err.value)
    assert leftovers(work) == ["evil.zip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_hostile_member_is_refused_even_when_not_selected(tmp_path):
    archive, member = hostile_tar(tmp_path / "evil.tar.gz", "dotdot")
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        safe_extract(archive, tmp_path / "out", ["ok.txt"])
    assert not (tmp_path / "out").exists()


# --- registry ----------------------------------------------------------------------------------

def test_registry_names_the_published_files():
    assert set(SOURCES) == {"elasticity", "airfoil", "pipe", "darcy", "drivaerml", "lpbf"}
    prefix = f"{DEFAULT_BASE_URL}/datasets/{PDE_SURROGATES}/resolve/main/"
    (elasticity,) = SOURCES["elasticity"]
    assert elasticity.url == prefix + "Geo-FNO.tar.gz"
    assert [m.split("/")[-1] for m in elasticity.archive_members] == ["Random_UnitCell_sigma_10.npy", "Random_UnitCell_XY_10.npy"]
    assert [m.split("/")[-1] for m in SOURCES["darcy"][0].archive_members] == [
        "piececonst_r421_N1024_smooth1.mat", "piececonst_r421_N1024_smooth2.mat"]
    assert SOURCES["darcy"][0].url == prefix + "FNO.tar.gz"
    sizes = {f.variant: f.url for f in SOURCES["drivaerml"]}
    for size in ("10k", "40k", "100k", "200k", "300k", "400k", "500k", "1m"):
        assert sizes[size] == prefix + f"drivaerml_surface_presampled_{size}.tar.gz"
    assert any("LPBF_FLARE" in f.url for f in SOURCES["lpbf"])


def test_variants_are_selected_explicitly_or_by_default():
    assert [f.name for f in select_files("drivaerml")] == ["drivaerml_surface_presampled_40k.tar.gz"]
    assert [f.variant for f in select_files("drivaerml", "1m")] == ["1m"]
    with pytest.raises(ValueError, match="40k"):
        select_files("drivaerml", "7k")
    with pytest.raises(ValueError, match="no variants"):
        select_files("elasticity", "40k")
    with pytest.raises(KeyError, match="darcy"):
        select_files("darcyy")
    (local,) = select_files("pipe", base_url="http://127.0.0.1:1/")
    assert local.url == f"http://127.0.0.1:1/datasets/{PDE_SURROGATES}/resolve/main/Geo-FNO.tar.gz"


def test_checksum_store_records_once_and_refuses_a_different_hash(tmp_path):
    store = tmp_path / "config" / "checksums.yaml"
    assert load_checksums(store) == {}
    record_checksum(store, "Geo-FNO.tar.gz", "A" * 64)
    record_checksum(store, "Geo-FNO.tar.gz", "a" * 64)  # same hash: no-op
    record_checksum(store, "data/train-00000-of-00001.parquet", "b" * 64)
    assert load_checksums(store) == {"Geo-FNO.tar.gz": "a" * 64, "data/train-00000-of-00001.parquet": "b" * 64}
    with pytest.raises(ChecksumConflictError) as err:
        record_checksum(store, "Geo-FNO.tar.gz", "c" * 64)
    assert "a" * 64 in str(err.value) and "c" * 64 in str(err.value) and "Geo-FNO.tar.gz" in str(err.value)
    assert load_checksums(store)["Geo-FNO.tar.gz"] == "a" * 64
    with pytest.raises(ValueError, match="sha256"):
        record_checksum(store, "x", "not-a-hash")
    assert sorted(p.name for p in store.parent.iterdir()) == ["checksums.yaml"]  # no lock or temp files


def test_checksum_store_keeps_hand_written_comments(tmp_path):
    store = tmp_path / "checksums.yaml"
    store.write_text("# pinned by hand\nFNO.tar.gz: " + "d" * 64 + "\n")
    record_checksum(store, "Geo-FNO.tar.gz", "e" * 64)
    assert store.read_text().startswith("# pinned by hand\n")
    assert yaml.safe_load(store.read_text()) == {"FNO.tar.gz": "d" * 64, "Geo-FNO.tar.gz": "e" * 64}


# --- download_source end to end -------------------------------------------------------------

@pytest.fixture
def geo_fno(hub, tmp_path):
    """A miniature Geo-FNO.tar.gz served at its Hugging Face path; returns (url, bytes, arrays)."""
    archive = tmp_path / "served" / "Geo-FNO.tar.gz"
    archive.parent.mkdir()
    arrays = geo_fno_tarball(archive)
    data = archive.read_bytes()
    return hub.serve_hf(PDE_SURROGATES, "Geo-FNO.tar.gz", data), data, arrays


def test_elasticity_is_downloaded_verified_extracted_and_its_hash_recorded(hub, geo_fno, tmp_path):
    url, data, arrays = geo_fno
    store = tmp_path / "checksums.yaml"
    sigma, xy = download_source("elasticity", tmp_path / "raw", base_url=hub.base_url, checksums_file=store, progress=False)
    assert archive_stem("Geo-FNO.tar.gz") == "Geo-FNO"
    assert sigma == tmp_path / "raw/Geo-FNO/Geo-FNO/elasticity/Meshes/Random_UnitCell_sigma_10.npy"
    np.testing.assert_array_equal(np.load(sigma), arrays["Geo-FNO/elasticity/Meshes/Random_UnitCell_sigma_10.npy"])
    assert np.load(sigma).shape == (972, 3) and np.load(xy).shape == (972, 2, 3)  # sample axis last
    assert not (sigma.parent / "Random_UnitCell_rr_10.npy").exists()  # only the members elasticity needs
    assert load_checksums(store) == {"Geo-FNO.tar.gz": sha(data)}
    # Second use: verified against the store, nothing downloaded again.
    assert download_source("elasticity", tmp_path / "raw", base_url=hub.base_url, checksums_file=store, progress=False) == [sigma, xy]
    assert hub.count(url) == 1


def test_datasets_sharing_an_archive_reuse_the_download_and_add_their_members(hub, geo_fno, tmp_path):
    url, _, arrays = geo_fno
    store = tmp_path / "checksums.yaml"
    kw = dict(base_url=hub.base_url, checksums_file=store, progress=False)
    download_source("elasticity", tmp_path / "raw", **kw)
    x, y, q = download_source("airfoil", tmp_path / "raw", **kw)
    assert q.name == "NACA_Cylinder_Q.npy" and np.load(q).shape == (3, 5, 11, 5)
    px, py, pq = download_source("pipe", tmp_path / "raw", **kw)
    np.testing.assert_array_equal(np.load(pq), arrays["Geo-FNO/pipe/Pipe_Q.npy"])
    assert hub.count(url) == 1
    assert (tmp_path / "raw/Geo-FNO/Geo-FNO/elasticity/Meshes/Random_UnitCell_XY_10.npy").exists()


def test_tampered_cached_archive_is_reported_by_name(hub, geo_fno, tmp_path):
    url, data, _ = geo_fno
    store = tmp_path / "checksums.yaml"
    kw = dict(base_url=hub.base_url, checksums_file=store, progress=False)
    download_source("elasticity", tmp_path / "raw", **kw)
    cached = tmp_path / "raw" / "Geo-FNO.tar.gz"
    cached.write_bytes(data + b"tampered")
    with pytest.raises(ChecksumMismatchError) as err:
        download_source("pipe", tmp_path / "raw", **kw)
    assert str(cached) in str(err.value) and sha(data) in str(err.value)
    assert not (tmp_path / "raw/Geo-FNO/Geo-FNO/pipe").exists()


def test_wrong_recorded_checksum_stops_before_extraction(hub, geo_fno, tmp_path):
    store = tmp_path / "checksums.yaml"
    record_checksum(store, "Geo-FNO.tar.gz", "0" * 64)
    with pytest.raises(ChecksumMismatchError, match="Geo-FNO.tar.gz"):
        download_source("elasticity", tmp_path / "raw", base_url=hub.base_url, checksums_file=store, progress=False)
    assert leftovers(tmp_path / "raw") == []
    assert load_checksums(store) == {"Geo-FNO.tar.gz": "0" * 64}


def test_hostile_published_archive_is_refused_and_its_hash_not_recorded(hub, tmp_path):
    archive, member = hostile_tar(tmp_path / "evil.tar.gz", "symlink_out")
    hub.serve_hf(PDE_SURROGATES, "drivaerml_surface_presampled_10k.tar.gz", archive.read_bytes())
    store = tmp_path / "checksums.yaml"
    with pytest.raises(UnsafeArchiveError, match=member):
        download_source("drivaerml", tmp_path / "raw", base_url=hub.base_url, checksums_file=store,
                        variant="10k", progress=False)
    assert leftovers(tmp_path / "raw") == ["drivaerml_surface_presampled_10k.tar.gz"]
    assert not store.exists()


def test_darcy_files_arrive_readable_by_the_darcy_reader(hub, tmp_path):
    served = tmp_path / "FNO.tar.gz"
    arrays = fno_tarball(served)
    hub.serve_hf(PDE_SURROGATES, "FNO.tar.gz", served.read_bytes())
    train, test = download_source("darcy", tmp_path / "raw", base_url=hub.base_url, progress=False)
    assert train.name == "piececonst_r421_N1024_smooth1.mat" and test.name == "piececonst_r421_N1024_smooth2.mat"
    coeff, sol = darcy.read_fno_mat(test)
    np.testing.assert_allclose(sol, arrays["FNO/darcy/piececonst_r421_N1024_smooth2.mat"][1], rtol=1e-6)
    assert not (tmp_path / "raw/FNO/FNO/navier_stokes").exists()


def test_drivaerml_downloads_only_the_selected_size(hub, tmp_path):
    for size in ("10k", "40k"):
        served = tmp_path / f"{size}.tar.gz"
        drivaerml_tarball(served, size)
        hub.serve_hf(PDE_SURROGATES, f"drivaerml_surface_presampled_{size}.tar.gz", served.read_bytes())
    files = download_source("drivaerml", tmp_path / "raw", base_url=hub.base_url, variant="10k", progress=False)
    assert sorted(p.relative_to(tmp_path / "raw").as_posix() for p in files) == [
        f"drivaerml_surface_presampled_10k/drivaerml_surface_presampled_10k/{split}/run_{i}.npz"
        for split, i in (("test", 3), ("train", 1), ("train", 2))
    ]
    with np.load(files[0]) as run:
        assert run["surface_mesh_centers"].shape[1] == 3 and run["surface_fields"].shape[1] == 4
    assert [p for p, _ in hub.requests] == [f"/datasets/{PDE_SURROGATES}/resolve/main/drivaerml_surface_presampled_10k.tar.gz"]

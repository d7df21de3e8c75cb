"""The HDF5 CAM store: round trip, attributes, atomic writes, errors, concurrent readers."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np
import pytest

from wsss_core.cams.store import CAMReader, CAMStoreError, CAMWriter

CLASSES = ["background", "cat", "dog", "car", "person", "tree"]
META = dict(classes=CLASSES, scales=[1.0, 0.5, 1.5], stride=16, checkpoint_sha256="ab" * 32)


def write_store(path, images, **extra):
    with CAMWriter(path, **META, **extra) as writer:
        for image_id, (cams, class_ids) in images.items():
            writer.write(image_id, cams, class_ids)


def random_images(seed=0, n=4):
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n):
        ids = sorted(rng.choice(np.arange(1, len(CLASSES)), size=int(rng.integers(1, 4)), replace=False).tolist())
        h, w = int(rng.integers(5, 20)), int(rng.integers(5, 20))
        images[f"2007_{i:06d}"] = (rng.random((len(ids), h, w)).astype(np.float32), ids)
    images["2007_nolabel"] = (np.zeros((0, 7, 9), np.float32), [])
    return images


def test_round_trip_attributes_and_layout(tmp_path):
    images = random_images()
    path = tmp_path / "train.h5"
    write_store(path, images, extra_attrs={"split": "train", "flip": True})

    with CAMReader(path) as reader:
        assert len(reader) == len(images)
        assert reader.ids() == sorted(images)
        assert "2007_000000" in reader and "nope" not in reader
        for image_id, (cams, class_ids) in images.items():
            got, got_ids = reader.read(image_id)
            assert got.dtype == np.float32 and got.shape == cams.shape
            assert got_ids == tuple(class_ids)
            np.testing.assert_array_equal(got, cams.astype(np.float16).astype(np.float32))
            np.testing.assert_allclose(got, cams, atol=5e-4)
        attrs = reader.attrs
    assert attrs["classes"] == CLASSES
    assert attrs["scales"] == [1.0, 0.5, 1.5]
    assert attrs["stride"] == 16
    assert attrs["checkpoint_sha256"] == "ab" * 32
    assert attrs["created_with"].startswith("wsss ")
    assert attrs["split"] == "train" and attrs["flip"] is True

    with h5py.File(path, "r") as f:
        dset = f["2007_000000"]
        assert dset.dtype == np.float16
        assert dset.compression == "gzip"
        assert dset.chunks == (1, *dset.shape[1:])
        assert f["2007_nolabel"].shape == (0, 7, 9)


def test_class_order_is_ascending_and_dense_expands(tmp_path):
    cams = np.stack([np.full((3, 4), v, np.float32) for v in (0.25, 0.5, 1.0)])
    path = tmp_path / "s.h5"
    write_store(path, {"img": (cams, [4, 1, 3]), "empty": (np.zeros((0, 3, 4)), [])})
    with CAMReader(path) as reader:
        got, ids = reader.read("img")
        assert ids == (1, 3, 4)
        np.testing.assert_array_equal(got[:, 0, 0], [0.5, 1.0, 0.25])
        dense = reader.dense("img", len(CLASSES))
        assert dense.shape == (len(CLASSES) - 1, 3, 4) and dense.dtype == np.float32
        np.testing.assert_array_equal(dense[:, 0, 0], [0.5, 0.0, 1.0, 0.25, 0.0])
        empty, empty_ids = reader.read("empty")
        assert empty.shape == (0, 3, 4) and empty_ids == ()
        assert not reader.dense("empty", len(CLASSES)).any()
        with pytest.raises(CAMStoreError, match="class 4 >= 3"):
            reader.dense("img", 3)


def test_failed_write_leaves_nothing_and_keeps_older_store(tmp_path):
    path = tmp_path / "train.h5"
    with pytest.raises(RuntimeError):
        with CAMWriter(path, **META) as writer:
            writer.write("a", np.zeros((1, 2, 2)), [1])
            raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []

    write_store(path, {"old": (np.ones((1, 2, 2)), [2])})
    with pytest.raises(ValueError, match="in 1..5"):
        write_store(path, {"new": (np.ones((1, 2, 2)), [2]), "bad": (np.ones((1, 2, 2)), [0])})
    assert [p.name for p in tmp_path.iterdir()] == ["train.h5"]
    with CAMReader(path) as reader:
        assert reader.ids() == ["old"]


@pytest.mark.parametrize(
    "cams, class_ids, message",
    [
        (np.ones((2, 3, 3)), [1], r"shape \(2, 3, 3\) for 1 class id"),
        (np.ones((3, 3)), [], "expected \\(K, H, W\\)"),
        (np.ones((2, 3, 3)), [2, 2], "distinct"),
        (np.ones((1, 3, 3)), [6], "in 1..5"),
        (np.full((1, 3, 3), 1.5), [1], r"in \[0, 1\]"),
        (np.full((1, 3, 3), np.nan), [1], "finite"),
    ],
)
def test_writer_rejects_bad_maps(tmp_path, cams, class_ids, message):
    with pytest.raises(ValueError, match=message):
        write_store(tmp_path / "x.h5", {"img": (cams, class_ids)})
    assert not (tmp_path / "x.h5").exists()


def test_writer_rejects_duplicates_bad_names_and_reserved_attrs(tmp_path):
    one = (np.zeros((1, 2, 2)), [1])
    with pytest.raises(ValueError, match="image 'a': written twice"):
        with CAMWriter(tmp_path / "x.h5", **META) as writer:
            writer.write("a", *one)
            writer.write("a", *one)
    with pytest.raises(ValueError, match="HDF5 dataset name"):
        write_store(tmp_path / "x.h5", {"dir/img": one})
    with pytest.raises(ValueError, match="stride"):
        CAMWriter(tmp_path / "x.h5", **META, extra_attrs={"stride": 8})
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        CAMWriter(tmp_path / "x.h5", **META).write("a", *one)


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "train.h5"
    write_store(path, {"a": (np.zeros((1, 2, 2)), [1])})
    with CAMReader(path) as reader, pytest.raises(CAMStoreError, match=f"{path}: no CAMs for image 'b'"):
        reader.read("b")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        CAMReader(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CAMStoreError, match=r"text.h5: not a CAM store \(not an HDF5 file"):
        CAMReader(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CAMStoreError, match="other.h5: not a CAM store"):
        CAMReader(tmp_path / "other.h5")


def _checksums(path):
    with CAMReader(path) as reader:
        return {i: float(reader.read(i)[0].astype(np.float64).sum()) for i in reader.ids()}


def test_several_processes_read_at_once(tmp_path):
    path = tmp_path / "train.h5"
    write_store(path, random_images(seed=1, n=8))
    with CAMReader(path) as parent:  # held open while the children read
        expected = {i: float(parent.read(i)[0].astype(np.float64).sum()) for i in parent.ids()}
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_checksums, [path] * 4))
    assert all(r == expected for r in results)

import numpy as np
import pytest
from PIL import Image

from wsss_core.data.voc_layout import voc_palette
from wsss_core.fileio import atomic_dir, atomic_file, save_label_png, write_text


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_whole_tree_or_nothing(tmp_path):
    target = tmp_path / "tree"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_label_png_round_trip_keeps_ids_and_voc_colours(tmp_path):
    labels = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    save_label_png(tmp_path / "m.png", labels, voc_palette())
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), labels)
    rgb = np.asarray(img.convert("RGB"))
    assert tuple(rgb[0, 1]) == (128, 0, 0)  # aeroplane
    assert tuple(rgb[0, 2]) == (192, 128, 128)  # person
    assert tuple(rgb[1, 1]) == (224, 224, 192)  # void
    with pytest.raises(ValueError, match="2-D uint8"):
        save_label_png(tmp_path / "bad.png", labels.astype(np.int32), voc_palette())

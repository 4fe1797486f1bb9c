"""A partner node's own data: npz, CSV and image folders, checked against the task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from federator import DataError
from federator.client.local_data import load_node_data


def _digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((50, 64)).astype(np.float32), rng.integers(0, 10, 50)


def test_npz_is_split_reproducibly(tmp_path: Path) -> None:
    x, y = _digits()
    path = tmp_path / "site.npz"
    np.savez(path, x=x, y=y)
    a = load_node_data(path, input_shape=(64,), val_fraction=0.2)
    b = load_node_data(path, input_shape=(64,), val_fraction=0.2)
    assert (len(a.train), len(a.val)) == (40, 10)
    assert np.array_equal(a.val.x, b.val.x)
    rows = {tuple(r) for r in np.concatenate([a.train.x, a.val.x]).tolist()}
    assert rows == {tuple(r) for r in x.tolist()}  # nothing lost or duplicated


def test_npz_with_its_own_validation_split(tmp_path: Path) -> None:
    x, y = _digits()
    path = tmp_path / "site.npz"
    np.savez(path, x=x[:30], y=y[:30], x_val=x[30:], y_val=y[30:])
    data = load_node_data(path, input_shape=(64,), val_fraction=0.5)
    assert np.array_equal(data.train.x, x[:30])
    assert np.array_equal(data.val.y, y[30:])


def test_csv_with_a_label_column(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("a,label,b\n0.5,1,2\n1.5,0,3\n2.5,2,4\n3.5,1,5\n")
    data = load_node_data(path, input_shape=(2,), val_fraction=0.0)
    order = np.argsort(data.train.x[:, 0])
    assert data.train.x[order].tolist() == [[0.5, 2], [1.5, 3], [2.5, 4], [3.5, 5]]
    assert data.train.y[order].tolist() == [1, 0, 2, 1]


def test_image_folder_one_class_per_subfolder(tmp_path: Path) -> None:
    for label, shade in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("L", (28, 28), color=shade).save(tmp_path / label / f"{i}.png")
    data = load_node_data(tmp_path, input_shape=(1, 28, 28), val_fraction=0.0)
    assert data.train.x.shape == (6, 1, 28, 28)
    for x, y in zip(data.train.x, data.train.y, strict=True):
        assert float(x.mean()) == (0.0 if y == 0 else 1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,label\nx,1\n", "every value must be a number"),
        ("a,label\n0.5,1.5\n", "whole-number labels"),
        ("a,label\n", "at least one example"),
    ],
)
def test_bad_csv_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "site.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_node_data(path, input_shape=(1,), val_fraction=0.0)


def test_wrong_shape_is_refused_naming_both(tmp_path: Path) -> None:
    x, y = _digits()
    path = tmp_path / "site.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=r"have shape \(64,\), but the task expects \(1, 28, 28\)"):
        load_node_data(path, input_shape=(1, 28, 28), val_fraction=0.1)


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_node_data(tmp_path / "nope.npz", input_shape=(64,), val_fraction=0.1)
    other = tmp_path / "site.parquet"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="use a .npz file"):
        load_node_data(other, input_shape=(64,), val_fraction=0.1)


def test_npz_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "site.npz"
    np.savez(path, x=np.zeros((3, 64)))
    with pytest.raises(DataError, match=r"missing array\(s\) \['y'\]"):
        load_node_data(path, input_shape=(64,), val_fraction=0.1)

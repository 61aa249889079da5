"""Plots: lines and bands read back against the histories, count matrices against hand counts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from lightning_fedmut import FederatedResult
from lightning_fedmut.data import load_partition_json, partition_dirichlet, save_partition_json
from lightning_fedmut.plotting import label_distribution, plot_label_distribution, plot_metric

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# evaluated every other round, training loss every round
FEDAVG = [
    {"round": 0, "val_acc": 0.40, "val_loss": 1.9, "clients/train_loss": 2.1},
    {"round": 1, "clients/train_loss": 1.8},
    {"round": 2, "val_acc": 0.55, "val_loss": 1.5, "clients/train_loss": 1.4},
    {"round": 3, "clients/train_loss": 1.2},
    {"round": 4, "val_acc": 0.61, "val_loss": 1.2, "clients/train_loss": 1.1},
]
FEDMUT_SEEDS = [
    [{"round": 0, "val_acc": 0.50}, {"round": 2, "val_acc": 0.75}, {"round": 4, "val_acc": 0.875}],
    [{"round": 0, "val_acc": 0.25}, {"round": 2, "val_acc": 0.50}, {"round": 4, "val_acc": 0.625}],
    [{"round": 0, "val_acc": 0.00}, {"round": 2, "val_acc": 0.25}, {"round": 4, "val_acc": 0.500}],
]


def xy(line):
    return list(line.get_xdata()), list(line.get_ydata())


def band_vertices(collection):
    return {tuple(v) for path in collection.get_paths() for v in path.vertices.tolist()}


def test_single_history_skips_rounds_without_the_metric():
    fig = plot_metric(FEDAVG, metric="val_acc")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1
    assert xy(ax.get_lines()[0]) == ([0.0, 2.0, 4.0], [0.40, 0.55, 0.61])
    assert len(ax.collections) == 0  # one seed: no band
    assert ax.get_legend() is None  # a single run has no label
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("round", "val_acc")
    assert fig.canvas.manager is None  # built without pyplot


def test_every_round_metric_and_federated_result():
    result = FederatedResult(history=FEDAVG)
    fig = plot_metric({"FedAvg": result}, metric="clients/train_loss")
    (line,) = fig.axes[0].get_lines()
    assert xy(line) == ([0.0, 1.0, 2.0, 3.0, 4.0], result.metric("clients/train_loss"))
    assert fig.axes[0].get_ylabel() == "clients/train_loss"


def test_two_methods_side_by_side_with_legend():
    fedmut = [dict(row, val_acc=row["val_acc"] + 0.1) if "val_acc" in row else row for row in FEDAVG]
    fig = plot_metric({"FedAvg": FEDAVG, "FedMut": FederatedResult(history=fedmut)}, title="MNIST, alpha=0.1")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["FedAvg", "FedMut"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FedAvg", "FedMut"]
    assert xy(lines[0]) == ([0.0, 2.0, 4.0], [r["val_acc"] for r in FEDAVG if "val_acc" in r])
    assert xy(lines[1]) == ([0.0, 2.0, 4.0], [r["val_acc"] for r in fedmut if "val_acc" in r])
    assert lines[0].get_color() != lines[1].get_color()
    assert ax.get_title() == "MNIST, alpha=0.1"


def test_seeds_draw_the_mean_and_a_min_max_band():
    seeds = [FederatedResult(history=FEDMUT_SEEDS[0]), FEDMUT_SEEDS[1], FEDMUT_SEEDS[2]]  # forms can mix
    fig = plot_metric({"FedAvg": FEDAVG, "FedMut": seeds})
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2  # one line per run, not per seed
    values = np.array([[row["val_acc"] for row in h] for h in FEDMUT_SEEDS])
    x, y = xy(ax.get_lines()[1])
    assert x == [0.0, 2.0, 4.0]
    np.testing.assert_allclose(y, values.mean(axis=0), rtol=0, atol=1e-12)
    assert len(ax.collections) == 1  # the band, for the multi-seed run only
    vertices = band_vertices(ax.collections[0])
    for r, low, high in zip([0.0, 2.0, 4.0], values.min(axis=0), values.max(axis=0)):
        assert (r, low) in vertices and (r, high) in vertices
    assert min(v[1] for v in vertices) == values.min() and max(v[1] for v in vertices) == values.max()


def test_std_band():
    fig = plot_metric({"FedMut": FEDMUT_SEEDS}, band="std")
    values = np.array([[row["val_acc"] for row in h] for h in FEDMUT_SEEDS])
    mean = values.mean(axis=0)
    std = np.sqrt(((values - mean) ** 2).sum(axis=0) / (len(values) - 1))  # the sample std over the 3 seeds
    vertices = np.array(sorted(band_vertices(fig.axes[0].collections[0])))
    for r, low, high in zip([0.0, 2.0, 4.0], mean - std, mean + std):
        ys = vertices[vertices[:, 0] == r, 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [low, high], rtol=0, atol=1e-12)


def test_seeds_with_different_rounds_use_the_seeds_that_logged_each_round():
    seeds = [[{"round": 0, "val_acc": 0.5}, {"round": 1, "val_acc": 0.75}], [{"round": 0, "val_acc": 0.25}]]
    fig = plot_metric({"early stop": seeds})
    assert xy(fig.axes[0].get_lines()[0]) == ([0.0, 1.0], [0.375, 0.75])


def test_draws_into_given_axes_and_saves_png(tmp_path):
    fig = Figure()
    ax0, ax1 = fig.subplots(1, 2)
    path = tmp_path / "nested" / "dir" / "acc.png"
    out = plot_metric({"FedAvg": FEDAVG}, ax=ax1, path=path)
    assert out is fig
    assert ax0.get_lines() == [] and len(ax1.get_lines()) == 1
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_partial_metric_warns_and_draws_the_others():
    with pytest.warns(UserWarning, match=r"\['train only'\] never logged 'val_acc'"):
        fig = plot_metric({"FedAvg": FEDAVG, "train only": [{"round": 0, "clients/train_loss": 1.0}]})
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["FedAvg"]


@pytest.mark.parametrize(
    ("runs", "kwargs", "error", "match"),
    [
        ({}, {}, ValueError, "Expected `runs` to hold at least one run, got an empty mapping"),
        ([], {}, ValueError, "Expected `runs` to hold at least one run, got an empty list"),
        ({"FedAvg": []}, {}, ValueError, "run 'FedAvg' of `runs` is empty"),
        (
            {"FedAvg": FEDAVG},
            {"metric": "test_acc"},
            ValueError,
            r"No run in `runs` logged metric 'test_acc'. The runs logged: clients/train_loss, val_acc, val_loss\.",
        ),
        (FEDAVG, {"band": "iqr"}, ValueError, r"Expected `band` to be one of \['minmax', 'std'\], got 'iqr'"),
        (FEDAVG, {"metric": 3}, TypeError, "Expected `metric` to be a history key"),
        (42, {}, TypeError, "Expected `runs` to be a FederatedResult, a list of history dicts .* got int"),
        ({"FedMut": [FEDAVG, 1.0]}, {}, TypeError, "Expected seed 1 of run 'FedMut' of `runs`"),
    ],
)
def test_plot_metric_errors(runs, kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_metric(runs, **kwargs)


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning_fedmut\[plot\]'"):
        plot_metric(FEDAVG)
    with pytest.raises(ImportError, match=r"pip install 'lightning_fedmut\[plot\]'"):
        plot_label_distribution([0, 1], [[0, 1]])


LABELS = np.array([0, 2, 1, 1, 0, 2, 2, 3, 0, 1])
PARTS = [np.array([0, 4, 8, 1]), np.array([2, 3, 9]), np.array([5, 6, 7])]
# client 0: labels 0, 0, 0, 2; client 1: 1, 1, 1; client 2: 2, 2, 3
COUNTS = np.array([[3, 0, 1, 0], [0, 3, 0, 0], [0, 0, 2, 1]])


def test_label_distribution_matches_hand_counts():
    out = label_distribution(LABELS, PARTS)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, COUNTS)
    np.testing.assert_array_equal(label_distribution(LABELS.tolist(), [p.tolist() for p in PARTS]), COUNTS)


def test_label_distribution_dict_order_padding_and_empty_client():
    parts = {"b": PARTS[1], "a": PARTS[0], "empty": []}
    out = label_distribution(LABELS, parts, num_classes=6)
    expected = np.zeros((3, 6), dtype=np.int64)
    expected[0, :4], expected[1, :4] = COUNTS[1], COUNTS[0]
    np.testing.assert_array_equal(out, expected)


def test_label_distribution_of_a_dirichlet_partition_against_a_loop():
    labels = np.random.default_rng(0).integers(0, 5, size=300)
    parts = partition_dirichlet(labels, num_clients=6, alpha=0.3, min_size=5, seed=1)
    expected = np.zeros((6, 5), dtype=np.int64)
    for i, idx in enumerate(parts):
        for j in idx:
            expected[i, labels[j]] += 1
    np.testing.assert_array_equal(label_distribution(labels, parts), expected)


@pytest.mark.parametrize(
    ("labels", "parts", "kwargs", "error", "match"),
    [
        (LABELS, [[0, 10]], {}, ValueError, r"client 0 holds indices outside `labels` \(10 examples\): \[10\]"),
        (LABELS, [[0, -1]], {}, ValueError, r"outside `labels` .*\[-1\]"),
        (LABELS, PARTS, {"num_classes": 3}, ValueError, "`labels` holds class 3 but `num_classes` is 3"),
        (LABELS, PARTS, {"num_classes": 0}, ValueError, "Expected `num_classes` to be an integer >= 1"),
        (LABELS.astype(float), PARTS, {}, TypeError, "Expected `labels` to hold integer class indices"),
        ([], PARTS, {}, ValueError, "Expected `labels` to be a non-empty 1-D sequence"),
        (LABELS, [], {}, ValueError, "Expected `partitions` to hold at least one client"),
        (LABELS, 3, {}, TypeError, "Expected `partitions` to be a list of index arrays or a dict"),
        (LABELS, {"a": [0.5]}, {}, TypeError, "partition of client 'a' to be a 1-D list of integer indices"),
    ],
)
def test_label_distribution_errors(labels, parts, kwargs, error, match):
    with pytest.raises(error, match=match):
        label_distribution(labels, parts, **kwargs)


def test_plot_label_distribution_heatmap_is_the_count_matrix(tmp_path):
    path = tmp_path / "figs" / "partition.png"
    fig = plot_label_distribution(LABELS, PARTS, path=path, title="Dirichlet")
    ax = fig.axes[0]
    assert len(ax.images) == 1
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), COUNTS)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("class", "client", "Dirichlet")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert fig.canvas.manager is None


def test_plot_label_distribution_from_a_partition_json(tmp_path):
    save_partition_json({"alice": PARTS[2], "bob": PARTS[0]}, tmp_path / "parts.json")
    parts = load_partition_json(tmp_path / "parts.json")
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_label_distribution(LABELS, parts, num_classes=5, ax=ax) is fig
    np.testing.assert_array_equal(
        np.asarray(ax.images[0].get_array()), np.pad(COUNTS[[2, 0]], ((0, 0), (0, 1)))
    )
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alice", "bob"]

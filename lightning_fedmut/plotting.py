"""Figures for federated runs: a metric versus round, the label distribution of a partition, loss landscapes.

matplotlib is optional (``pip install 'lightning_fedmut[plot]'``) and imported only when a function
draws. Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no
display is needed and no global figure state is left behind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["label_distribution", "plot_label_distribution", "plot_landscape_1d", "plot_landscape_2d", "plot_metric"]

_BANDS = ("minmax", "std")
_INSTALL_HINT = "pip install 'lightning_fedmut[plot]'"


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"Plotting needs matplotlib, which is not installed. Install it with: {_INSTALL_HINT}"
        ) from err
    return Figure


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """Return ``(figure, axes)``: the given axes and its figure, or a fresh figure with one axes."""
    figure_class = _figure_class()
    if ax is not None:
        return ax.figure, ax
    fig = figure_class(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | os.PathLike | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)


def _is_history(obj: Any) -> bool:
    """A list of per-round dicts (an empty list counts: it is an empty history)."""
    return isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)) and all(isinstance(r, Mapping) for r in obj)


def _seeds(run: Any, where: str) -> list[list[Mapping[str, Any]]]:
    """The histories of one run: one for a single seed, several for a list of seeds."""
    history = getattr(run, "history", None)
    if history is not None and not isinstance(run, Mapping):
        return [list(history)]
    if _is_history(run):
        if not run:
            raise ValueError(f"{where} is empty: expected at least one round (or one seed).")
        return [list(run)]
    if isinstance(run, Sequence) and not isinstance(run, (str, bytes)):
        if not run:
            raise ValueError(f"{where} is empty: expected at least one round (or one seed).")
        out = []
        for i, seed in enumerate(run):
            seed_history = getattr(seed, "history", None)
            if seed_history is not None and not isinstance(seed, Mapping):
                out.append(list(seed_history))
            elif _is_history(seed):
                out.append(list(seed))
            else:
                raise TypeError(
                    f"Expected seed {i} of {where} to be a FederatedResult or a list of history dicts,"
                    f" got {type(seed).__name__}."
                )
        return out
    raise TypeError(
        f"Expected {where} to be a FederatedResult, a list of history dicts or a list of those (seeds),"
        f" got {type(run).__name__}."
    )


def _runs(runs: Any) -> list[tuple[str | None, list[list[Mapping[str, Any]]]]]:
    """Normalise ``runs`` to ``[(label, [history per seed])]``; a single run gets the label ``None``."""
    if isinstance(runs, Mapping):
        if not runs:
            raise ValueError("Expected `runs` to hold at least one run, got an empty mapping.")
        return [(str(label), _seeds(run, f"run {label!r} of `runs`")) for label, run in runs.items()]
    if isinstance(runs, Sequence) and not isinstance(runs, (str, bytes)) and not runs:
        raise ValueError("Expected `runs` to hold at least one run, got an empty list.")
    return [(None, _seeds(runs, "`runs`"))]


def _series(history: Sequence[Mapping[str, Any]], metric: str) -> dict[float, float]:
    """``{round: value}`` over the rounds that logged ``metric`` (a row without ``round`` uses its position)."""
    return {
        float(row.get("round", i)): float(row[metric])
        for i, row in enumerate(history)
        if row.get(metric) is not None
    }


def plot_metric(
    runs: Any,
    metric: str = "val_acc",
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ax: Any = None,
    *,
    band: str = "minmax",
    legend: bool = True,
) -> Any:
    """Draw ``metric`` versus round for one or several runs, e.g. FedMut next to FedAvg.

    Rounds that did not log ``metric`` (evaluation every N rounds) are skipped. A run given as several
    seeds is drawn as the mean over the seeds that logged each round, with a shaded band.

    Args:
        runs: a mapping ``{label: run}``, or a single run (drawn without a legend). A run is a
            :class:`~lightning_fedmut.FederatedResult`, a list of history dicts (one per round, with
            ``round``), or a list of those: several seeds of one method.
        metric: the history key to draw, e.g. ``"val_acc"``, ``"val_loss"``, ``"clients/train_loss"``.
        path: if given, save the figure there (parent folders are created; format from the suffix, PNG
            by default).
        title: the axes title.
        ax: draw into this matplotlib ``Axes`` instead of a new figure.
        band: the band of a multi-seed run: ``"minmax"`` (min to max over seeds) or ``"std"`` (mean
            plus or minus the sample standard deviation over the seeds, ``n - 1`` in the denominator).
        legend: draw the axes' legend (labelled runs only); ``False`` leaves it to the caller, e.g. one legend
            for a figure of several panels.

    Returns:
        The ``matplotlib.figure.Figure`` that holds the plot.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``runs`` (or a run in it) is empty, no run logged ``metric``, or ``band`` is unknown.
        TypeError: a run is not one of the accepted forms.

    Examples:
        >>> fedavg = [{"round": 0, "val_acc": 0.50}, {"round": 1}, {"round": 2, "val_acc": 0.70}]
        >>> fedmut = [[{"round": 0, "val_acc": 0.50}, {"round": 2, "val_acc": 0.75}],  # seed 0
        ...           [{"round": 0, "val_acc": 0.25}, {"round": 2, "val_acc": 0.50}]]  # seed 1
        >>> fig = plot_metric({"FedAvg": fedavg, "FedMut": fedmut}, metric="val_acc")
        >>> ax = fig.axes[0]
        >>> [line.get_label() for line in ax.get_lines()]
        ['FedAvg', 'FedMut']
        >>> ax.get_lines()[1].get_xydata().tolist()
        [[0.0, 0.375], [2.0, 0.625]]
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('round', 'val_acc')
    """
    if not isinstance(metric, str):
        raise TypeError(f"Expected `metric` to be a history key (a str), got {metric!r}.")
    if band not in _BANDS:
        raise ValueError(f"Expected `band` to be one of {list(_BANDS)}, got {band!r}.")
    normalised = _runs(runs)
    drawn = []
    for label, seeds in normalised:
        series = [_series(history, metric) for history in seeds]
        if any(series):
            drawn.append((label, series))
    if not drawn:
        logged = sorted({k for _, seeds in normalised for h in seeds for row in h for k in row} - {"round"})
        raise ValueError(
            f"No run in `runs` logged metric {metric!r}. The runs logged: {', '.join(logged) or 'nothing'}."
            " Pass one of these as `metric`."
        )
    missing = [label for label, _ in normalised if label not in {d[0] for d in drawn}]
    if missing:
        warnings.warn(f"Runs {missing} never logged {metric!r}; they are left out of the plot.", stacklevel=2)

    fig, ax = _axes(ax, figsize=(6.0, 4.0))
    for label, series in drawn:
        rounds = np.array(sorted(set().union(*series)), dtype=float)
        values = [np.array([s[r] for s in series if r in s]) for r in rounds]
        mean = np.array([v.mean() for v in values])
        (line,) = ax.plot(rounds, mean, label=label, marker="o" if len(rounds) == 1 else None)
        if len(series) > 1:
            if band == "minmax":
                low, high = np.array([v.min() for v in values]), np.array([v.max() for v in values])
            else:
                std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])  # sample std
                low, high = mean - std, mean + std
            ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend and any(label is not None for label, _ in drawn):
        ax.legend()
    _save(fig, path)
    return fig


def _partitions(partitions: Any, num_examples: int) -> tuple[list[Any], list[np.ndarray]]:
    """``(client ids, index arrays)``; a sequence gives ids ``0..n-1``, a mapping keeps its keys."""
    if isinstance(partitions, Mapping):
        items = list(partitions.items())
    elif isinstance(partitions, Sequence) and not isinstance(partitions, (str, bytes)):
        items = list(enumerate(partitions))
    else:
        raise TypeError(
            "Expected `partitions` to be a list of index arrays or a dict {client_id: indices},"
            f" got {type(partitions).__name__}."
        )
    if not items:
        raise ValueError("Expected `partitions` to hold at least one client, got none.")
    ids, arrays = [], []
    for cid, idx in items:
        arr = np.asarray(idx)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(
                f"Expected the partition of client {cid!r} to be a 1-D list of integer indices, got {idx!r}."
            )
        bad = arr[(arr < 0) | (arr >= num_examples)]
        if bad.size:
            raise ValueError(
                f"Partition of client {cid!r} holds indices outside `labels` ({num_examples} examples):"
                f" {bad[:5].tolist()}."
            )
        ids.append(cid)
        arrays.append(arr.astype(np.int64))
    return ids, arrays


def _label_matrix(labels: Any, partitions: Any, num_classes: int | None) -> tuple[list[Any], np.ndarray]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"Expected `labels` to be a non-empty 1-D sequence of class indices, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"Expected `labels` to hold integer class indices, got dtype {arr.dtype}.")
    if arr.min() < 0:
        raise ValueError(f"Expected `labels` to be class indices >= 0, got {int(arr.min())}.")
    if num_classes is None:
        num_classes = int(arr.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be an integer >= 1, got {num_classes!r}.")
    elif arr.max() >= num_classes:
        raise ValueError(
            f"`labels` holds class {int(arr.max())} but `num_classes` is {num_classes}."
            f" Pass num_classes >= {int(arr.max()) + 1} or leave it None."
        )
    ids, arrays = _partitions(partitions, len(arr))
    counts = np.stack([np.bincount(arr[idx], minlength=num_classes) for idx in arrays]).astype(np.int64)
    return ids, counts


def label_distribution(labels: Any, partitions: Any, num_classes: int | None = None) -> np.ndarray:
    """Count the examples of each class held by each client.

    Args:
        labels: the data set's class index per example (a 1-D integer array, list or CPU tensor).
        partitions: a list of index arrays (client ``i`` is row ``i``) or a dict ``{client_id: indices}``
            (rows in the dict's order), as returned by
            :func:`~lightning_fedmut.data.partition_dirichlet` or
            :func:`~lightning_fedmut.data.load_partition_json`. A client may be empty.
        num_classes: the number of columns; ``max(labels) + 1`` by default.

    Returns:
        An ``int64`` array of shape ``(clients, classes)``: entry ``[i, c]`` counts the examples of
        class ``c`` in client ``i``'s partition.

    Examples:
        >>> label_distribution([0, 1, 1, 2, 0], [[0, 1], [2, 3, 4]])
        array([[1, 1, 0],
               [1, 1, 1]])
        >>> label_distribution([0, 1, 1], {"a": [2], "b": [0, 1]}, num_classes=4)
        array([[0, 1, 0, 0],
               [1, 1, 0, 0]])
    """
    return _label_matrix(labels, partitions, num_classes)[1]


def plot_label_distribution(
    labels: Any,
    partitions: Any,
    num_classes: int | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """Draw the clients x classes count matrix of a partition as a heatmap (the non-IID picture).

    Rows are clients (y axis ``"client"``), columns are classes (x axis ``"class"``); the colour of a
    cell is the number of examples (see :func:`label_distribution`), with a colour bar.

    Args:
        labels: the data set's class index per example.
        partitions: a list of index arrays or a dict ``{client_id: indices}``.
        num_classes: the number of classes; ``max(labels) + 1`` by default.
        path: if given, save the figure there (parent folders are created; PNG by default).
        title: the axes title.
        ax: draw into this matplotlib ``Axes`` instead of a new figure.

    Returns:
        The ``matplotlib.figure.Figure`` that holds the plot.

    Examples:
        >>> fig = plot_label_distribution([0, 1, 1, 2, 0], [[0, 1], [2, 3, 4]])
        >>> ax = fig.axes[0]
        >>> ax.images[0].get_array().tolist()
        [[1, 1, 0], [1, 1, 1]]
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('class', 'client')
    """
    ids, counts = _label_matrix(labels, partitions, num_classes)
    num_clients, num_cols = counts.shape
    fig, ax = _axes(ax, figsize=(min(2.0 + 0.4 * num_cols, 12.0), min(1.5 + 0.3 * num_clients, 10.0)))
    image = ax.imshow(counts, aspect="auto", cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, label="examples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    if num_cols <= 30:
        ax.set_xticks(range(num_cols))
    if num_clients <= 40:
        ax.set_yticks(range(num_clients), [str(cid) for cid in ids])
    if title is not None:
        ax.set_title(title)
    _save(fig, path)
    return fig


def _curves(curves: Any) -> list[tuple[str | None, list[Mapping[str, Any]]]]:
    """Normalise to ``[(label, [curve per seed])]``; a single curve gets the label ``None``."""
    def seeds(run: Any, where: str) -> list[Mapping[str, Any]]:
        if isinstance(run, Mapping):
            run = [run]
        if not isinstance(run, Sequence) or isinstance(run, (str, bytes)) or not run:
            raise TypeError(
                f"Expected {where} to be a curve of loss_landscape_1d or a non-empty list of them, got {run!r}."
            )
        for curve in run:
            if not isinstance(curve, Mapping) or "alpha" not in curve:
                raise TypeError(
                    f"Expected {where} to hold curves of loss_landscape_1d (dicts with 'alpha'), got {curve!r}."
                )
        return list(run)

    if isinstance(curves, Mapping) and "alpha" in curves:
        return [(None, seeds(curves, "`curves`"))]
    if isinstance(curves, Mapping):
        if not curves:
            raise ValueError("Expected `curves` to hold at least one curve, got an empty mapping.")
        return [(str(label), seeds(run, f"curve {label!r} of `curves`")) for label, run in curves.items()]
    return [(None, seeds(curves, "`curves`"))]


def plot_landscape_1d(
    curves: Any,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ax: Any = None,
    *,
    metric: str = "loss",
    band: str = "minmax",
) -> Any:
    """Draw loss curves along a direction (:func:`~lightning_fedmut.analysis.loss_landscape_1d`) on one axes.

    Several models go on one axes, e.g. FedMut's and FedAvg's final global models; a model given as several
    curves (seeds) is drawn as their mean, with a shaded band. A flatter minimum is a wider, lower bowl.

    Args:
        curves: a mapping ``{label: curve}`` or ``{label: [curve per seed]}``, or a single curve (drawn
            without a legend). A curve is the dict that ``loss_landscape_1d`` returns; the curves of one
            label share their ``alpha``.
        path: if given, save the figure there (parent folders are created; PNG by default).
        title: the axes title.
        ax: draw into this matplotlib ``Axes`` instead of a new figure.
        metric: the curve's key to draw: ``"loss"`` or ``"metric"``.
        band: the band of several seeds: ``"minmax"`` or ``"std"`` (plus or minus one sample standard deviation).

    Returns:
        The ``matplotlib.figure.Figure`` that holds the plot.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``curves`` is empty, a curve lacks ``metric``, the curves of a label differ in
            ``alpha``, or ``band`` is unknown.
        TypeError: ``curves`` is not one of the accepted forms.

    Examples:
        >>> import numpy as np
        >>> alpha = np.array([-1.0, 0.0, 1.0])
        >>> fedavg = {"alpha": alpha, "loss": np.array([2.0, 0.5, 2.0])}
        >>> fedmut = [{"alpha": alpha, "loss": np.array([1.0, 0.4, 1.2])},  # seed 0
        ...           {"alpha": alpha, "loss": np.array([1.2, 0.6, 1.0])}]  # seed 1
        >>> fig = plot_landscape_1d({"FedAvg": fedavg, "FedMut": fedmut})
        >>> ax = fig.axes[0]
        >>> ax.get_legend_handles_labels()[1]
        ['FedAvg', 'FedMut']
        >>> ax.get_lines()[1].get_xydata().tolist()
        [[-1.0, 1.1], [0.0, 0.5], [1.0, 1.1]]
    """
    if band not in _BANDS:
        raise ValueError(f"Expected `band` to be one of {list(_BANDS)}, got {band!r}.")
    normalised = _curves(curves)
    fig, ax = _axes(ax, figsize=(6.0, 4.0))
    for label, runs in normalised:
        alpha = np.asarray(runs[0]["alpha"], dtype=float)
        for curve in runs:
            if metric not in curve:
                raise ValueError(f"Curve {label!r} has no {metric!r}; it holds {sorted(curve)}.")
            if not np.array_equal(np.asarray(curve["alpha"], dtype=float), alpha):
                raise ValueError(f"The curves of {label!r} differ in `alpha`: draw them under separate labels.")
        values = np.stack([np.asarray(curve[metric], dtype=float) for curve in runs])
        mean = values.mean(axis=0)
        (line,) = ax.plot(alpha, mean, label=label)
        if len(runs) > 1:
            if band == "minmax":
                low, high = values.min(axis=0), values.max(axis=0)
            else:
                std = values.std(axis=0, ddof=1)  # the sample standard deviation over the runs
                low, high = mean - std, mean + std
            ax.fill_between(alpha, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlabel("alpha (step along the direction)")
    ax.set_ylabel(metric)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(label is not None for label, _ in normalised):
        ax.legend()
    _save(fig, path)
    return fig


def plot_landscape_2d(
    surface: Mapping[str, Any],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ax: Any = None,
    *,
    metric: str = "loss",
    levels: int | Sequence[float] | np.ndarray = 20,
    log: bool = False,
) -> Any:
    """Draw a loss surface (:func:`~lightning_fedmut.analysis.loss_landscape_2d`) as a contour plot.

    Filled contours of ``surface[metric]`` over the plane, with a colour bar and the model itself marked at
    the origin.

    Args:
        surface: the dict that ``loss_landscape_2d`` returns (``"x"``, ``"y"`` and ``metric`` of shape
            ``(len(y), len(x))``).
        path: if given, save the figure there (parent folders are created; PNG by default).
        title: the axes title.
        ax: draw into this matplotlib ``Axes`` instead of a new figure.
        metric: the key to draw: ``"loss"`` or ``"metric"``.
        levels: the number of contour levels, or the levels themselves (increasing; in ``log10`` units with
            ``log``): give several surfaces the same levels to draw them on one colour scale.
        log: draw ``log10`` of the values (for losses spanning orders of magnitude; they must be > 0).

    Returns:
        The ``matplotlib.figure.Figure`` that holds the plot.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``surface`` lacks a key, its shape does not match ``x`` and ``y``, or ``log`` is asked of
            values that are not all positive.

    Examples:
        >>> import numpy as np
        >>> x = y = np.linspace(-1.0, 1.0, 5)
        >>> surface = {"x": x, "y": y, "loss": x[None, :] ** 2 + 2 * y[:, None] ** 2}
        >>> fig = plot_landscape_2d(surface, levels=8)
        >>> ax = fig.axes[0]
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('x (direction 1)', 'y (direction 2)')
        >>> len(fig.axes)  # the plot and its colour bar
        2
        >>> fig = plot_landscape_2d(surface, levels=[0.0, 1.0, 2.0, 3.0])  # a colour scale shared with others
        >>> fig.axes[0].collections[0].levels.tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    if not isinstance(surface, Mapping):
        raise TypeError(f"Expected `surface` to be the dict of loss_landscape_2d, got {type(surface).__name__}.")
    missing = [k for k in ("x", "y", metric) if k not in surface]
    if missing:
        raise ValueError(f"`surface` has no {missing}; it holds {sorted(surface)}.")
    if isinstance(levels, (Sequence, np.ndarray)):
        levels = np.asarray(levels, dtype=float)
        if levels.ndim != 1 or len(levels) < 2 or not np.all(np.diff(levels) > 0):
            raise ValueError(f"Expected `levels` to be at least two increasing values, got {levels.tolist()!r}.")
    elif isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"Expected `levels` to be an integer >= 2 or a list of increasing values, got {levels!r}.")
    x, y = np.asarray(surface["x"], dtype=float), np.asarray(surface["y"], dtype=float)
    z = np.asarray(surface[metric], dtype=float)
    if z.shape != (len(y), len(x)):
        raise ValueError(
            f"Expected `surface[{metric!r}]` of shape (len(y), len(x)) = {(len(y), len(x))}, got {z.shape}."
        )
    label = metric
    if log:
        if not np.all(z > 0):
            raise ValueError(f"`log=True` needs positive values of {metric!r}; the smallest is {z.min()}.")
        z, label = np.log10(z), f"log10 {metric}"
    fig, ax = _axes(ax, figsize=(5.5, 4.5))
    filled = ax.contourf(x, y, z, levels=levels, cmap="viridis", extend="both")
    ax.contour(x, y, z, levels=filled.levels, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, label=label)
    ax.plot([0.0], [0.0], marker="*", color="red", markersize=10, linestyle="none")
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")
    ax.set_aspect("equal", adjustable="box")
    ax.locator_params(nbins=5)
    if title is not None:
        ax.set_title(title)
    _save(fig, path)
    return fig

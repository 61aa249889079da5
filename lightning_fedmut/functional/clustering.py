"""Clustered sampling (Fraboni et al., ICML 2021, Algorithm 2), as pure functions.

Clients are represented by their last update; the matrix of pairwise similarities of those updates is
clustered hierarchically (Ward's linkage on its rows); the dendrogram is cut into the clusters whose
clients together hold at most ``1/m`` of the data; and ``m`` sampling distributions are filled, the ``m``
largest clusters one each and the smaller ones spread over them, each distribution holding exactly ``1/m``
of the data. One client is drawn from each distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: The similarity measures between two client updates (Fraboni et al.'s ``get_similarity``).
SIMILARITIES = ("arccos", "L2", "L1")


@torch.no_grad()
def update_similarity(update: Tensor, others: Sequence[Tensor], kind: str = "arccos") -> Tensor:
    """The similarity of one client's flat ``update`` with each of ``others`` (float64, smaller is closer).

    - ``"arccos"``: the angle ``arccos(<a, b> / (|a| |b|))`` in ``[0, pi]``, and 0 when either update is
      zero (a client that has not trained yet), as in Fraboni et al.'s code;
    - ``"L2"``: the squared distance ``|a - b|^2``;
    - ``"L1"``: ``sum |a - b|``.

    Examples:
        >>> a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
        >>> update_similarity(a, [a, b, torch.zeros(2)]).tolist()
        [0.0, 1.5707963267948966, 0.0]
        >>> update_similarity(a, [b], "L2").tolist(), update_similarity(a, [b], "L1").tolist()
        ([5.0], [3.0])
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"Expected `similarity` in {SIMILARITIES}, got {kind!r}.")
    a = update.detach().double().flatten()
    out = torch.empty(len(others), dtype=torch.float64)
    norm_a = a.norm()
    for i, other in enumerate(others):
        b = other.detach().double().flatten()
        if kind == "arccos":
            norm_b = b.norm()
            if norm_a == 0 or norm_b == 0:
                out[i] = 0.0
            else:
                out[i] = torch.arccos(torch.clamp(a.dot(b) / (norm_a * norm_b), -1.0, 1.0))
        elif kind == "L2":
            out[i] = (a - b).pow(2).sum()
        else:
            out[i] = (a - b).abs().sum()
    return out


def ward_linkage(points: np.ndarray) -> np.ndarray:
    """Ward's hierarchical clustering of the rows of ``points``, in SciPy's ``linkage`` format.

    Returns ``(n - 1, 4)`` rows ``[a, b, distance, size]``: the ``k``-th merge joins clusters ``a < b`` into
    cluster ``n + k`` of ``size`` points, at Ward's distance ``sqrt(2 |a||b| / (|a| + |b|)) |c_a - c_b|``.
    Merges come in the order of increasing distance (Ward's linkage is monotone); the naive algorithm with
    the Lance-Williams update, O(n^3), is plenty for federations of hundreds of clients.

    Examples:
        >>> ward_linkage(np.array([[0.0], [1.0], [5.0]]))[:, [0, 1, 3]].tolist()
        [[0.0, 1.0, 2.0], [2.0, 3.0, 3.0]]
    """
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if n < 2:
        return np.zeros((0, 4))
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)  # squared Euclidean distances
    np.fill_diagonal(d2, np.inf)
    ids = np.arange(n)
    sizes = np.ones(n)
    out = np.zeros((n - 1, 4))
    for step in range(n - 1):
        flat = int(np.argmin(d2))
        i, j = divmod(flat, n)
        if i > j:
            i, j = j, i
        dij = d2[i, j]
        si, sj = sizes[i], sizes[j]
        out[step] = [min(ids[i], ids[j]), max(ids[i], ids[j]), np.sqrt(dij), si + sj]
        # Lance-Williams for Ward on squared distances; row i becomes the merged cluster, row j leaves
        sk = sizes
        merged = ((si + sk) * d2[i] + (sj + sk) * d2[j] - sk * dij) / (si + sj + sk)
        alive = np.isfinite(d2[j]) | np.isfinite(d2[i])
        merged[~alive] = np.inf
        merged[i] = merged[j] = np.inf
        d2[i, :], d2[:, i] = merged, merged
        d2[j, :], d2[:, j] = np.inf, np.inf
        ids[i], sizes[i] = n + step, si + sj
    return out


def weight_clusters(linkage: np.ndarray, weights: Sequence[int], num_samples: int) -> np.ndarray:
    """Cut the dendrogram into the largest subtrees holding at most ``1/num_samples`` of the total weight.

    ``weights`` are the clients' integer weights (their numbers of examples), so the cut is exact: a
    subtree is a cluster when ``num_samples * its weight <= total weight``. Returns each client's cluster
    label, ``0 .. C-1`` in the order of each cluster's first client. Fraboni et al. do the same with
    SciPy's ``fcluster`` on a dendrogram whose heights are the subtrees' weights.

    Examples:
        >>> link = ward_linkage(np.array([[0.0], [1.0], [5.0], [6.0]]))
        >>> weight_clusters(link, [1, 1, 1, 1], num_samples=2).tolist()
        [0, 0, 1, 1]
    """
    w = [int(v) for v in weights]
    n, total = len(w), sum(w)
    mass = w + [0] * max(0, n - 1)
    members: list[list[int]] = [[i] for i in range(n)] + [[] for _ in range(max(0, n - 1))]
    label = list(range(n))  # the cluster node of each client
    for k, (a, b, _, _) in enumerate(linkage):
        node, a, b = n + k, int(a), int(b)
        mass[node] = mass[a] + mass[b]
        members[node] = members[a] + members[b]
        if num_samples * mass[node] <= total:
            for client in members[node]:
                label[client] = node
    first: dict[int, int] = {}
    return np.array([first.setdefault(node, len(first)) for node in label])


def clustered_distributions(
    linkage: np.ndarray, weights: Sequence[int], num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Fraboni et al.'s Algorithm 2: ``num_samples`` sampling distributions over the clients, ``(m, n)`` float64.

    The tree is cut by :func:`weight_clusters`; the ``m`` clusters of largest weight each fill one
    distribution; the clients of the other clusters (smallest cluster first, clients shuffled within a
    cluster by ``generator``) fill the distributions in turn, a client's weight spilling into the next
    distribution when one is full. Clusters of equal weight are ordered by their first client (Fraboni et
    al.'s sort leaves their order unspecified). Each distribution then holds exactly ``1/m`` of the total weight and each
    client ``m`` times its share over all of them, so drawing one client from each is unbiased. Rows are
    normalised to sum to 1.

    Examples:
        >>> link = ward_linkage(np.array([[0.0], [1.0], [5.0], [6.0]]))
        >>> clustered_distributions(link, [1, 1, 1, 1], num_samples=2).tolist()
        [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    w = [int(v) for v in weights]
    n, total, m = len(w), sum(w), int(num_samples)
    if not 1 <= m <= n:
        raise ValueError(f"Expected `num_samples` in [1, {n}], got {m}.")
    labels = weight_clusters(linkage, w, m)
    clusters = [np.flatnonzero(labels == c).tolist() for c in range(int(labels.max()) + 1)]
    mass = [m * sum(w[i] for i in c) for c in clusters]  # in units where a distribution holds `total`
    order = sorted(range(len(clusters)), key=lambda c: mass[c])  # stable: ties by the first client
    table = np.zeros((m, n), dtype=np.int64)
    kept, spread = order[len(order) - m:], order[: len(order) - m]
    for row, c in enumerate(kept):
        for i in clusters[c]:
            table[row, i] = m * w[i]
    row = 0
    for c in spread:
        members = clusters[c]
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        for i in shuffled:
            left = m * w[i]
            while left > 0:
                while table[row].sum() >= total:
                    row += 1
                take = min(total - int(table[row].sum()), left)
                table[row, i] += take
                left -= take
    out = torch.tensor(table, dtype=torch.float64)
    return out / out.sum(dim=1, keepdim=True)

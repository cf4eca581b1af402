"""The labelled figures of the demo, the study and training runs, drawn with matplotlib on its Agg backend.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure state, safe in any
process), so a caller — or a test — can inspect its texts before :func:`save_figure` writes it. matplotlib is
part of the ``train`` extra (``pip install 'mtl_ops[train]'``) and is imported on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from ..utils.files import atomic_write

#: image tiles of the predictions grid: inches per tile side (the longer one) and the figures' resolution
TILE_INCHES = 1.1
DPI = 110


def _matplotlib():
    """(Figure, FigureCanvasAgg), or an ImportError that says how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"the report figures need matplotlib: pip install 'mtl_ops[train]' (or pip install "
                          f"matplotlib); importing it failed: {e}") from e
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (whole or not at all: see :func:`mtl_ops.utils.files.atomic_write`)."""
    return atomic_write(Path(path), lambda f: figure.savefig(f, format="png", dpi=DPI))


def figure_texts(figure) -> list:
    """Every non-empty text of ``figure`` (titles, axis labels, tick labels, annotations, legends, colour bars)."""
    from matplotlib.text import Text

    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


# ---------------------------------------------------------------------------------------------- predictions
def predictions_figure(blocks: Sequence[Tuple[str, Sequence[Tuple[str, Sequence[np.ndarray]]]]],
                       columns: Sequence[str]):
    """A grid of RGB tiles: ``blocks`` side by side, each ``(title, rows)`` with ``rows`` a list of
    ``(row name, [one (H, W, 3) uint8 tile per column])``; ``columns`` names the columns of every block. Row names
    label the rows at the left, column names head each block's columns. Every tile must be given."""
    if not blocks:
        raise ValueError("predictions_figure: blocks must hold at least one (title, rows) block, got none")
    names = [[name for name, _ in rows] for _, rows in blocks]
    if any(n != names[0] for n in names) or not names[0]:
        raise ValueError(f"predictions_figure: every block needs the same non-empty row names, got {names}")
    for title, rows in blocks:
        for name, tiles in rows:
            if len(tiles) != len(columns) or any(t is None or np.asarray(t).ndim != 3 for t in tiles):
                raise ValueError(f"predictions_figure: block {title!r}, row {name!r}: expected {len(columns)} RGB "
                                 f"(H, W, 3) tiles (columns {list(columns)}), got "
                                 f"{[None if t is None else np.asarray(t).shape for t in tiles]}")
    h, w = np.asarray(blocks[0][1][0][1][0]).shape[:2]
    tile_w, tile_h = TILE_INCHES * w / max(h, w), TILE_INCHES * h / max(h, w)
    n_rows, n_cols = len(names[0]), len(columns)
    figure = new_figure(len(blocks) * n_cols * tile_w + 1.4, n_rows * tile_h + 0.8)
    subfigures = np.atleast_1d(figure.subfigures(1, len(blocks), wspace=0.02))
    for b, (sub, (title, rows)) in enumerate(zip(subfigures, blocks)):
        sub.suptitle(title, fontsize=10)
        axes = sub.subplots(n_rows, n_cols, squeeze=False)
        for r, (name, tiles) in enumerate(rows):
            for c, tile in enumerate(tiles):
                ax = axes[r, c]
                ax.imshow(tile, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(columns[c], fontsize=9)
                if c == 0 and b == 0:
                    ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    return figure


# ---------------------------------------------------------------------------------------------- heat maps
def _annotated_matrix(figure, ax, matrix: np.ndarray, *, vmin: float, vmax: float, colorbar: Optional[str],
                      fmt: str = ".2f", cmap: str = "viridis", labels: Optional[np.ndarray] = None):
    """``matrix`` as an image with each cell's value (or its entry of ``labels``) written in it and, unless
    ``colorbar`` is None, a colour bar named ``colorbar``."""
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(matrix):
        text = labels[i, j] if labels is not None else format(value, fmt)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if value > middle else "white")
    if colorbar is not None:
        figure.colorbar(image, ax=ax, label=colorbar, shrink=0.9)
    return image


def similarity_figure(matrix, tasks: Sequence[str], title: str, *, colorbar: str = "debiased linear CKA"):
    """A (T, T) task-similarity heat map: task names on both axes, each value in its cell, a colour bar. The colour
    range is [0, 1], widened to the values when the (debiased) estimate leaves it."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(tasks):
        raise ValueError(f"similarity_figure: expected a ({len(tasks)}, {len(tasks)}) matrix for tasks {list(tasks)}, "
                         f"got shape {m.shape}")
    side = 1.2 + 0.8 * len(tasks)
    figure = new_figure(side + 1.2, side)
    ax = figure.subplots()
    _annotated_matrix(figure, ax, m, vmin=min(0.0, float(m.min())), vmax=max(1.0, float(m.max())),
                      colorbar=colorbar)
    ax.set_xticks(range(len(tasks)), labels=list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), labels=list(tasks))
    ax.set_title(title, fontsize=10)
    return figure


def policy_figure(tasks: Sequence[str], sampled, probabilities=None):
    """AdaShare's policy per task and residual block: the learned execute probabilities (when given) beside the
    hard policy sampled from them (execute / skip)."""
    sampled = np.asarray(sampled, dtype=np.float64)
    if sampled.ndim != 2 or sampled.shape[0] != len(tasks):
        raise ValueError(f"policy_figure: sampled must be (T, L) with T = {len(tasks)} tasks {list(tasks)}, got shape "
                         f"{sampled.shape}")
    panels = [("sampled policy", sampled)]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != sampled.shape:
            raise ValueError(f"policy_figure: probabilities must have the sampled policy's shape {sampled.shape}, "
                             f"got {probabilities.shape}")
        panels.insert(0, ("learned execute probability", probabilities))
    T, L = sampled.shape
    figure = new_figure(len(panels) * (1.8 + 0.55 * L), 1.0 + 0.45 * T)
    for ax, (title, values) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        if title == "sampled policy":  # each cell says run or skip: no colour bar needed
            _annotated_matrix(figure, ax, values, vmin=0, vmax=1, colorbar=None, cmap="Greys_r",
                              labels=np.where(values > 0.5, "run", "skip"))
        else:
            _annotated_matrix(figure, ax, values, vmin=0, vmax=1, colorbar="P(execute)")
        ax.set_xticks(range(L), labels=[str(i + 1) for i in range(L)])
        ax.set_yticks(range(T), labels=list(tasks))
        ax.set_xlabel("residual block")
        ax.set_title(title, fontsize=10)
    figure.suptitle("AdaShare policy per task and block", fontsize=10)
    return figure


# ---------------------------------------------------------------------------------------------- curves
def curves_figure(loss: Mapping[str, Sequence[Tuple[float, float]]], metrics: Mapping[str, Sequence[Tuple[float, float]]],
                  metric_labels: Mapping[str, str], phases: Sequence[Tuple[float, str]] = (), title: str = ""):
    """Training curves: a panel of losses per epoch (``loss``: {name: [(epoch, value)]}) and one panel per task's
    validation metric (``metrics``: {task: [(epoch, value)]}, y label from ``metric_labels``); ``phases``:
    (epoch where a phase starts, its name), drawn as dotted lines named at the top."""
    if not any(loss.values()):
        raise ValueError("curves_figure: loss holds no (epoch, value) point to plot")
    panels = [t for t, points in metrics.items() if points]
    n = 1 + len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    figure = new_figure(3.6 * cols, 2.8 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    ax = axes[0]
    for name, points in loss.items():
        if points:
            x, y = zip(*points)
            ax.plot(x, y, marker=".", label=name, linewidth=2.0 if name == "total" else 1.0)
    positive = all(v > 0 for points in loss.values() for _, v in points)  # uncertainty weighting's total may not be
    if positive:
        ax.set_yscale("log")
    ax.set_title("training loss", fontsize=10)
    ax.set_ylabel("loss (log scale)" if positive else "loss")
    ax.legend(fontsize=7)
    for ax, task in zip(axes[1:], panels):
        x, y = zip(*metrics[task])
        ax.plot(x, y, marker="o")
        ax.set_title(f"validation {task}", fontsize=10)
        ax.set_ylabel(metric_labels[task])
    for ax in axes[:n]:
        ax.set_xlabel("epoch")
        for start, _ in phases:
            ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
    for ax in axes[1:n]:  # every panel on the loss panel's epochs
        ax.set_xlim(axes[0].get_xlim())
    if phases:
        axes[0].secondary_xaxis("top").set_xticks([p for p, _ in phases], labels=[name for _, name in phases],
                                                   rotation=30, fontsize=6, ha="left")
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# ---------------------------------------------------------------------------------------------- spread
def spread_figure(panels: Sequence[Tuple], title: str = ""):
    """Per-seed spread: one panel per ``(title, y label, {method: [value per seed]})`` or ``(title, y label, values,
    (reference value, its name))``, each seed a dot, the mean a bar with ± one standard deviation, methods along the
    x axis, the reference (if any) a dashed line."""
    if not panels:
        raise ValueError("spread_figure: expected at least one panel, got none")
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    width = max(len(panel[2]) for panel in panels)
    figure = new_figure(cols * max(3.4, 0.55 * width + 1.2), 3.0 * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    jitter = np.random.default_rng(0)  # fixed: the same figure for the same numbers
    for ax, (panel_title, ylabel, values, *reference) in zip(axes, panels):
        methods = list(values)
        if reference and reference[0] is not None:
            value, name = reference[0]
            ax.axhline(value, color="grey", linestyle="--", linewidth=1.0, label=name)
            ax.legend(fontsize=7)
        for i, method in enumerate(methods):
            v = np.asarray(values[method], dtype=np.float64)
            if not v.size:
                continue
            ax.scatter(i + jitter.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.8, zorder=3)
            std = v.std(ddof=1) if v.size > 1 else 0.0
            ax.errorbar(i, v.mean(), yerr=std, fmt="_", markersize=16, color="black", capsize=4, zorder=4)
        ax.set_xticks(range(len(methods)), labels=methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure



def metric_label(task: str, metric: str, higher_is_better: bool) -> str:
    """An axis label such as ``semseg mIoU (higher is better)``."""
    return f"{task} {metric} ({'higher' if higher_is_better else 'lower'} is better)"

"""The report's plots (matplotlib, Agg canvas, no display): similarity curve, landmark vectors, rTRE.

Each function draws one figure into a PNG file and returns its path. Figures are made with
:class:`matplotlib.figure.Figure` on an Agg canvas, never through ``pyplot``: no global state, no
window, safe in threads and on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "MAX_CURVE_POINTS", "plot_landmark_vectors", "plot_rtre_distribution", "plot_similarity_curve", "subsample",
]

#: most points of a similarity curve drawn (longer histories are subsampled evenly)
MAX_CURVE_POINTS = 200
_DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fig.savefig(tmp, format="png", dpi=_DPI)
    tmp.replace(path)
    return path


def subsample(values: Sequence[float], n: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` evenly spread ``(index, value)`` points of ``values``, the last one kept.

    Examples
    --------
    >>> i, v = subsample(list(range(1000)), 5)
    >>> i.tolist(), v.tolist()
    ([0, 250, 500, 749, 999], [0.0, 250.0, 500.0, 749.0, 999.0])
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size <= n:
        idx = np.arange(arr.size)
    else:
        idx = np.unique(np.round(np.linspace(0, arr.size - 1, n)).astype(int))
    return idx, arr[idx]


def plot_similarity_curve(history: Sequence[float], path: Path, *, iterations: int | None = None,
                          metric: str | None = None) -> Path:
    """The similarity per iteration (for ``mine``: the MINE lower bound on the mutual information).

    Parameters
    ----------
    history : sequence of float
        The registration's ``loss_history`` (a smoothed value every few iterations).
    path : Path
        PNG to write.
    iterations : int, optional
        Iterations the registration ran: the x axis is scaled to them.
    metric : str, optional
        The similarity's name, for the axis label.
    """
    idx, values = subsample(history)
    n = len(np.asarray(history).ravel())
    step = iterations / n if iterations and n else 1.0
    fig = _figure(4.6, 2.6)
    ax = fig.add_subplot()
    ax.plot((idx + 1) * step, values, color="#1f77b4", lw=1.5)
    finite = values[np.isfinite(values)]
    if finite.size:
        ax.axhline(float(finite[-1]), color="#888", lw=0.8, ls=":")
    ax.set_xlabel("iteration")
    label = "MINE bound on MI (nats)" if (metric or "mine") == "mine" else f"similarity ({metric})"
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_landmark_vectors(background: np.ndarray, fixed_xy: np.ndarray, warped_xy: np.ndarray,
                          errors: np.ndarray, path: Path, *, error_label: str = "rTRE") -> Path:
    """Arrows from each warped moving landmark to its fixed landmark over the fixed image.

    Parameters
    ----------
    background : ndarray, shape (h, w, 3), uint8
        The fixed thumbnail (shown in grey).
    fixed_xy, warped_xy : ndarray, shape (N, 2)
        The fixed landmarks and the moving landmarks mapped into the fixed image, in thumbnail
        pixels ``(x, y)``.
    errors : ndarray, shape (N,)
        Each landmark's error (colour of its arrow and dot).
    path : Path
        PNG to write.
    error_label : str
        Name of the error on the colour bar.
    """
    from matplotlib import colors

    h, w = background.shape[:2]
    grey = np.asarray(background, dtype=np.float64)[..., :3].mean(axis=-1)
    fig = _figure(5.6, 4.4 * h / w + 0.3 if w else 4.0)  # about 4.4 in for the image, the rest for the bar
    ax = fig.add_subplot()
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, alpha=0.6)
    err = np.asarray(errors, dtype=np.float64)
    norm = colors.Normalize(vmin=0.0, vmax=float(err.max()) if err.size and err.max() > 0 else 1.0)
    d = np.asarray(fixed_xy) - np.asarray(warped_xy)
    q = ax.quiver(warped_xy[:, 0], warped_xy[:, 1], d[:, 0], d[:, 1], err, cmap="plasma", norm=norm,
                  angles="xy", scale_units="xy", scale=1.0, width=0.006, headwidth=4, headlength=5)
    ax.scatter(fixed_xy[:, 0], fixed_xy[:, 1], c=err, cmap="plasma", norm=norm, s=14, edgecolors="black",
               linewidths=0.5, zorder=3)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    fig.colorbar(q, ax=ax, shrink=0.8, label=error_label)
    return _save(fig, path)


def plot_rtre_distribution(before: Sequence[float], after: Sequence[float], path: Path, *,
                           flagged: Sequence[bool] | None = None) -> Path:
    """The batch's median rTRE per pair before (identity) and after registration: box plots and paired dots.

    Parameters
    ----------
    before, after : sequence of float
        One value per pair, in the same order.
    path : Path
        PNG to write.
    flagged : sequence of bool, optional
        Pairs the quality check flagged (drawn in red).
    """
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    marks = np.zeros(len(b), bool) if flagged is None else np.asarray(flagged, dtype=bool)
    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot()
    ax.boxplot([b, a], positions=[0, 1], widths=0.35, showfliers=False,
               medianprops={"color": "black"}, boxprops={"color": "#555"})
    jitter = np.linspace(-0.08, 0.08, len(b)) if len(b) > 1 else np.zeros(len(b))
    for i in range(len(b)):
        colour = "#cf222e" if marks[i] else "#1f77b4"
        ax.plot([0 + jitter[i], 1 + jitter[i]], [b[i], a[i]], color=colour, alpha=0.5, lw=1)
        ax.scatter([0 + jitter[i], 1 + jitter[i]], [b[i], a[i]], color=colour, s=16, zorder=3)
    if np.all(np.concatenate([a, b]) > 0):
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # minor ticks: label 2 and 5 of each decade only
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else ""))
    ax.set_xticks([0, 1], ["before (identity)", "after registration"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("median rTRE per pair")
    ax.set_title(f"{len(b)} pair(s) with landmarks" + (f", {int(marks.sum())} flagged (red)" if marks.any() else ""),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)

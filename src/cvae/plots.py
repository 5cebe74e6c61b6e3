"""Pictures a person can open: sample grids, reconstructions, latent maps, loss curves.

Images are drawn as grids (grey or RGB), 1-D signals as line plots, table rows as histograms per
feature. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import CvaeError, CvaeWarning

FALLBACK_FONTS = ("Noto Sans CJK", "Noto Sans JP", "Noto Sans SC", "Noto Sans TC", "Noto Sans KR", "Source Han Sans",
                  "WenQuanYi", "Droid Sans Fallback", "AR PL", "IPAGothic", "IPAexGothic", "Unifont",
                  "Arial Unicode MS", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari",
                  "Noto Sans Thai", "Noto Color Emoji", "Noto Emoji", "Symbola")
_fonts_set = False


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    global _fonts_set
    if not _fonts_set:  # class names in other scripts (猫, 犬): the fonts installed that have them, after DejaVu
        _fonts_set = True
        from matplotlib import font_manager

        have = sorted({f.name for f in font_manager.fontManager.ttflist if f.name.startswith(FALLBACK_FONTS)})
        if have:
            plt.rcParams["font.sans-serif"] = [*plt.rcParams["font.sans-serif"][:1], *have,
                                               *plt.rcParams["font.sans-serif"][1:]]
    return plt


def to_display(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W) grey or (N, H, W, 3) RGB, clipped to [0, 1]. Four channels are RGBA and
    two grey + alpha, each drawn over white; other channel counts show their first channel."""
    a = images.detach().cpu().float().numpy() if torch.is_tensor(images) else np.asarray(images, np.float32)
    if a.ndim == 3:
        return np.clip(a, 0, 1)
    a = np.clip(a, 0, 1)
    if a.shape[1] in (2, 4):  # composite over a white page, as an image viewer shows transparency
        alpha = a[:, -1:]
        a = a[:, :-1] * alpha + (1.0 - alpha)
    if a.shape[1] == 3:
        return a.transpose(0, 2, 3, 1)
    return a[:, 0]


def image_grid(images, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) into one array, row by row, with ``pad`` white pixels between."""
    a = to_display(images)
    n = len(a)
    nrow = max(1, -(-n // ncol))
    h, w = a.shape[1:3]
    shape = (nrow * (h + pad) + pad, ncol * (w + pad) + pad) + a.shape[3:]
    grid = np.ones(shape, np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = a[i]
    return grid


def input_and_output_rows(inputs: torch.Tensor, outputs: torch.Tensor, ncol: int = 8) -> tuple[torch.Tensor, int]:
    """Rows of up to ``ncol`` inputs, each above the row of their outputs (reconstructions), every input
    shown: a last, shorter row is filled with blank (white) cells. Returns the cells and the row length."""
    k = max(1, min(ncol, len(inputs)))
    blank = torch.ones_like(inputs[:1])
    rows = []
    for i in range(0, len(inputs), k):
        fill = [blank] * (k - len(inputs[i:i + k]))
        rows += [torch.cat([inputs[i:i + k], *fill]), torch.cat([outputs[i:i + k], *fill])]
    return torch.cat(rows), k


ROW_INCHES = 0.22  # the least height of a picture grid's row: its label (8 points) needs 0.11 inch


def save_image_grid(path, images, ncol: int, *, row_labels: list[str] | None = None, title: str | None = None,
                    col_labels: list[str] | None = None) -> Path:
    plt = _plt()
    grid = image_grid(images, ncol)
    nrow = max(1, -(-len(images) // ncol))
    h, w = to_display(images[:1]).shape[1:3]
    scale = max(0.35, min(1.2, 28 / max(h, w)))
    row_h = h * scale / 28 * 0.9  # inches
    flat = row_h < ROW_INCHES  # images a few pixels high (1 x 40 strips): stretched to a readable row height
    fig_w = max(3.0, ncol * w * scale / 28 * 0.9 + (1.2 if row_labels else 0.2))
    fig_h = max(2.0, nrow * max(row_h, ROW_INCHES) + (0.6 if title else 0.2) + (0.4 if col_labels else 0))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
              aspect="auto" if flat else "equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels:
        ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(row_labels, fontsize=8)
    if col_labels:
        ax.set_xticks([1 + c * (w + 1) + w / 2 for c in range(len(col_labels))])
        slanted = max(len(s) for s in col_labels) > 3
        # a slanted label starts at its own column (centred, a long one began over the columns to its left)
        ax.set_xticklabels(col_labels, fontsize=7, rotation=45 if slanted else 0, ha="left" if slanted else "center",
                           rotation_mode="anchor")
        ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)  # long row labels stay whole
    _plt().close(fig)
    missing = sorted({chr(int(m.group(1))) for w in caught
                      if (m := re.search(r"Glyph (\d+) .*missing from font", str(w.message)))})
    if missing:  # one line that says why the boxes, not a warning per character (the CLI showed none)
        warnings.warn(f"{path.name}: no installed font has the character(s) {' '.join(missing[:12])}"
                      f"{' ...' if len(missing) > 12 else ''}, drawn as boxes; install a font that has them (Debian: "
                      "fonts-noto-cjk for Chinese, Japanese and Korean) and cvae uses it", CvaeWarning, stacklevel=2)
    return path


def save_signals(path, rows: list[np.ndarray], row_labels: list[str] | None = None, title: str | None = None,
                 reference: list[np.ndarray] | None = None, cmap: str | None = None) -> Path:
    """Rows of 1-D signals (each (n, C, L) or (n, L)): one panel per row, the signals overlaid.

    With ``cmap`` (a matplotlib colour map name) the signals of a panel run through its colours in
    order, which shows a path (an interpolation, a traversal) as a gradient."""
    plt = _plt()
    channels = max((np.asarray(r).shape[1] if np.asarray(r).ndim == 3 else 1) for r in rows) if rows else 1
    if channels > 1:  # the first channel is drawn; say so rather than show a part as the whole
        title = f"{title + ': ' if title else ''}channel 0 of {channels}"
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 1.3 * len(rows) + 0.6), squeeze=False, sharex=True)
    for i, (ax, sig) in enumerate(zip(axes[:, 0], rows)):
        s = np.asarray(sig)
        s = s[:, 0] if s.ndim == 3 else s
        if reference is not None:
            r = np.asarray(reference[i])
            r = r[:, 0] if r.ndim == 3 else r
            for line in r:
                ax.plot(line, color="black", lw=0.8, alpha=0.6)
        colors = plt.get_cmap(cmap)(np.linspace(0, 1, len(s))) if cmap else [None] * len(s)
        for line, color in zip(s, colors):
            ax.plot(line, lw=0.8, alpha=0.7, color=color)
        if row_labels:
            ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    return _save(fig, path)


def save_feature_histograms(path, generated: np.ndarray, real: np.ndarray | None, names: list[str],
                            title: str | None = None) -> Path:
    """Per-feature histograms of generated rows (and real rows, for comparison), up to 12 features (the
    title says so where there are more); a few rows are drawn as points, not as densities."""
    plt = _plt()
    k = min(12, generated.shape[1])
    if generated.shape[1] > k:
        title = f"{title + '; ' if title else ''}the first {k} of {generated.shape[1]} features (all in the .csv/.npz output)"
    ncol = min(4, k)
    nrow = -(-k // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 1.9 * nrow + 0.5), squeeze=False)
    for j in range(nrow * ncol):
        ax = axes.flat[j]
        if j >= k:
            ax.axis("off")
            continue
        lo = np.nanmin(np.concatenate([generated[:, j], real[:, j]]) if real is not None else generated[:, j])
        hi = np.nanmax(np.concatenate([generated[:, j], real[:, j]]) if real is not None else generated[:, j])
        lo, hi = float(lo), float(hi)
        bins = np.linspace(lo, hi if hi > lo else lo + max(1.0, abs(lo) * 1e-6), 25)  # one value: a visible width
        if real is not None:
            ax.hist(real[:, j], bins=bins, density=True, alpha=0.5, color="gray", label="real")
        if len(generated) < 5:  # a density of one or two values is a bar of any height: their values, as marks
            for v in generated[:, j]:
                ax.axvline(v, color="C0", lw=1.5, label="generated" if v == generated[0, j] else None)
            ax.set_yticks([])
        else:
            ax.hist(generated[:, j], bins=bins, density=True, alpha=0.6, color="C0", label="generated")
        ax.set_title(names[j] if j < len(names) else f"feature {j}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def save_latent_map(path, mu: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None,
                    title: str = "latent space") -> Path:
    """The 2-D latent itself, else its first two principal components, coloured by a label."""
    plt = _plt()
    mu = np.asarray(mu, np.float64)
    if mu.shape[1] == 1:  # named z0, z1, ... as traverse, evaluate and embed (mu_0) name them
        pts, axis_names = np.concatenate([mu, np.zeros_like(mu)], 1), ("z0", "")
    elif mu.shape[1] == 2 or len(mu) < 2:  # (one example has no principal components: its first two dimensions)
        pts, axis_names = mu[:, :2], ("z0", "z1")
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(mu)
        pts = pca.transform(mu)
        ev = pca.explained_variance_ratio_
        axis_names = (f"PC1 ({ev[0]:.0%} of variance)", f"PC2 ({ev[1]:.0%})")
        title += f" (PCA of {mu.shape[1]}-D means)"
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    if labels is not None and class_names is not None:
        cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
        markers = "os^Dv<>PXph*"  # past the palette's colours, another marker: 240 classes drawn apart
        for k, name in enumerate(class_names):
            sel = labels == k
            if sel.any():
                ax.scatter(pts[sel, 0], pts[sel, 1], s=4 if k < cmap.N else 9, alpha=0.6, color=cmap(k % cmap.N),
                           marker=markers[(k // cmap.N) % len(markers)], label=name)
        if len(class_names) > 10 or max(map(len, class_names), default=0) > 16:  # beside the map, not over it
            ncol = 1 + len(class_names) // 25
            longest = max(map(len, class_names), default=0)
            fig.set_size_inches(6.2 + ncol * (0.6 + 0.045 * min(longest, 60)), 5.2)  # the map keeps its width
            ax.legend(markerscale=3, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                      ncol=ncol)
        else:
            ax.legend(markerscale=3, fontsize=7, loc="best")
    elif labels is not None:
        sc = ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6, c=labels, cmap="viridis")
        fig.colorbar(sc, ax=ax)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    if not axis_names[1]:  # a 1-D latent: the points lie on a line, the vertical axis means nothing
        ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def save_score_histogram(path, groups: dict[str, np.ndarray], threshold: float | None = None,
                         title: str = "anomaly scores", xlabel: str = "score") -> Path:
    """Overlaid histograms of scores per group (e.g. normal / anomaly), with the threshold as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    values = np.concatenate([np.asarray(v, np.float64) for v in groups.values() if len(v)])
    lo, hi = np.quantile(values, [0.0, 0.995]) if len(values) else (0.0, 1.0)
    if threshold is not None:
        hi = max(hi, threshold)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    for name, v in groups.items():
        if len(v):
            ax.hist(np.clip(v, lo, hi), bins=bins, density=True, alpha=0.55, label=f"{name} (n={len(v)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1, ls="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def save_loss_curves(path, metrics_path) -> Path:
    plt = _plt()
    rows = [json.loads(r) for r in Path(metrics_path).read_text().splitlines() if r.strip()]
    if not rows:
        raise CvaeError(f"{metrics_path} has no epochs yet")
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, name in zip(axes, ("loss", "reconstruction", "kl"), ("negative ELBO", "reconstruction", "KL")):
        ax.plot(ep, [r[f"train_{key}"] for r in rows], marker="o", ms=3, label="train")
        if f"val_{key}" in rows[0]:
            ax.plot(ep, [r[f"val_{key}"] for r in rows], marker="o", ms=3, label="validation")
        ax.set_title(f"{name} (nats per example)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole: no tick at 1.2
        ax.legend(fontsize=7)
    return _save(fig, path)


# -- the pictures of a finished run ---------------------------------------------------------------

ROWS = 20  # classes drawn in a run's samples.png (the first ones; the title says how many there are)


def condition_rows(model) -> tuple[list[str], torch.Tensor | None]:
    """One row per class of the first categorical attribute, the first ROWS of them (others at their first
    class / mean)."""
    schema = model.schema
    if not schema:
        return [""], None
    cat = [a for a in schema.attributes if a.kind == "categorical"]
    if not cat:
        y = schema.parse({}, 1)
        return [schema.describe(y[0])], y
    first = cat[0]
    classes = first.classes[:ROWS]
    y = schema.parse({first.name: classes}, len(classes))
    for a in cat[1:]:
        y[:, schema.names.index(a.name)] = 0.0
    return [schema.describe(row) for row in y], y


def _sequence_pictures(model, run_dir: Path, seed: int) -> dict[str, Path]:
    """samples.png (molecules drawn by RDKit, or sentences per condition) and loss.png."""
    from .apps.sequences import sample_to_file

    out = {}
    _, y_rows = condition_rows(model)
    y = None if y_rows is None else y_rows.repeat_interleave(max(1, 32 // len(y_rows)), dim=0)
    try:
        out["samples"], _ = sample_to_file(model, run_dir / "samples.png", n=32 if y is None else len(y), condition=y,
                                           seed=seed)
    except CvaeError:
        pass  # nothing valid to draw yet (a model after very few steps)
    if (run_dir / "metrics.jsonl").exists():
        out["loss"] = save_loss_curves(run_dir / "loss.png", run_dir / "metrics.jsonl")
    return out


def run_pictures(model, data, run_dir, *, seed: int = 0) -> dict[str, Path]:
    """samples.png, reconstructions.png, latent.png, loss.png for a trained run."""
    run_dir = Path(run_dir)
    out: dict[str, Path] = {}
    g = torch.Generator().manual_seed(seed)
    kind = data.kind
    if kind == "sequence":
        return _sequence_pictures(model, run_dir, seed)
    labels, y_rows = condition_rows(model)
    per_row = 10
    if y_rows is None:
        samples = model.sample(64 if kind == "image" else 200, generator=g).cpu()
    else:
        y = y_rows.repeat_interleave(per_row if kind == "image" else 20, dim=0)
        samples = model.sample(len(y), y, generator=g).cpu()
    show = data.test or data.val or data.train
    if kind == "image":
        ncol = 8 if y_rows is None else per_row
        title = "samples from p(x | z, c)"
        cats = [a for a in (model.schema.attributes if model.schema else []) if a.kind == "categorical"]
        if cats and len(cats[0].classes) > ROWS:
            title += f": the first {ROWS} of {len(cats[0].classes)} classes (cvae sample RUN --condition for the others)"
        out["samples"] = save_image_grid(run_dir / "samples.png", samples, ncol,
                                         row_labels=None if y_rows is None else labels, title=title)
    elif kind == "signal":
        rows = [samples] if y_rows is None else list(samples.split(20))
        out["samples"] = save_signals(run_dir / "samples.png", [r[:8].numpy() for r in rows],
                                      None if y_rows is None else labels, title="generated signals")
    else:
        real = model.to_data_units(show.x[:2000].to(model.device)).cpu().numpy()
        out["samples"] = save_feature_histograms(run_dir / "samples.png", samples.numpy(), real,
                                                 data.meta.get("features", []), title="generated vs real rows")
    # reconstructions: originals on odd rows, reconstructions below them
    x = show.x[:32].to(model.device)
    y = show.y[:32]
    rec = model.reconstruct(model.to_data_units(x), y if model.schema else None).cpu()
    x_units = model.to_data_units(x).cpu()
    if kind == "image":
        pairs, ncol = input_and_output_rows(x_units, rec)
        out["reconstructions"] = save_image_grid(run_dir / "reconstructions.png", pairs, ncol,
                                                 row_labels=["input", "recon."] * (len(pairs) // (2 * ncol)),
                                                 title="inputs and their reconstructions")
    elif kind == "signal":
        out["reconstructions"] = save_signals(run_dir / "reconstructions.png", [rec[i:i + 1].numpy() for i in range(4)],
                                              [f"#{i}" for i in range(4)], title="input (black) and reconstruction",
                                              reference=[x_units[i:i + 1].numpy() for i in range(4)])
    else:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        xs, rs = show.x[:500].numpy().ravel(), model.reconstruct(model.to_data_units(show.x[:500].to(model.device)),
                                                                show.y[:500] if model.schema else None)
        rs = ((rs.cpu() - model.x_loc.cpu()) / model.x_scale.cpu()).numpy().ravel()
        ax.scatter(xs, rs, s=2, alpha=0.3)
        lim = [min(xs.min(), rs.min()), max(xs.max(), rs.max())]
        ax.plot(lim, lim, color="black", lw=0.8)
        ax.set_xlabel("input (standardised)")
        ax.set_ylabel("reconstruction")
        ax.set_title("reconstructions of every feature", fontsize=10)
        out["reconstructions"] = _save(fig, run_dir / "reconstructions.png")
    # latent map of up to 5000 held-out examples
    n = min(5000, len(show))
    qz = model.encode(model.to_data_units(show.x[:n].to(model.device)), show.y[:n] if model.schema else None)
    first_cat = next((j for j, a in enumerate(model.schema.attributes) if a.kind == "categorical"), None)
    lab = show.y[:n, first_cat].long().numpy() if first_cat is not None else None
    names = model.schema.attributes[first_cat].classes if first_cat is not None else None
    if lab is None and show.labels is not None:  # a plain VAE on labelled data: colour by the label anyway
        lab, names = show.labels[:n], data.label_classes
    out["latent"] = save_latent_map(run_dir / "latent.png", qz.mu.cpu().numpy(), lab, names,
                                    title="posterior means of held-out examples")
    if (run_dir / "metrics.jsonl").exists():
        out["loss"] = save_loss_curves(run_dir / "loss.png", run_dir / "metrics.jsonl")
    return out


def save_factor_heatmap(path, matrix: np.ndarray, factor_names: list[str], *, title: str = "") -> Path:
    """A factors x latents heat map (values in [0, 1]), the value written in each cell."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)  # (F, D)
    f, d = m.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * d + 2.2), max(2.2, 0.45 * f + 1.2)))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(d))
    ax.set_xticklabels([f"z{j}" for j in range(d)], fontsize=8)
    ax.set_yticks(range(f))
    ax.set_yticklabels(factor_names, fontsize=8)
    for i in range(f):
        for j in range(d):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)

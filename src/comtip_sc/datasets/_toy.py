"""A synthetic tissue section whose tissue types show both in the H&E-like image and in expression."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Scale

from .._constants import (
    ARRAY_COL_KEY,
    ARRAY_ROW_KEY,
    IMAGE_SUFFIX,
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SHAPES_SUFFIX,
    SPATIAL_KEY,
    SPOT_DIAMETER_KEY,
    SPOT_ID_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)
from .._image import rgb_image_element

__all__ = ["toy_tissue"]

#: ``uns`` key holding the ground truth of the toy programme (markers, gradient genes).
TOY_UNS_KEY = "toy_tissue"

# The biology (gene programmes, colours, texture parameters) is drawn from this fixed seed so that
# sections made with different ``seed`` share it, as real sections of one tissue do; ``seed`` only
# moves the layout, texture phases and counting noise.
_PROGRAMME_SEED = 20240611

_TYPE_NAMES = ("epithelium", "stroma", "immune", "adipose")
_MARKERS = (
    ("KRT19", "EPCAM", "ERBB2", "KRT8", "KRT18", "CDH1"),
    ("COL1A1", "COL1A2", "COL3A1", "ACTA2", "DCN", "LUM"),
    ("PTPRC", "CD3E", "CD74", "HLA-DRA", "MS4A1", "CD68"),
    ("ADIPOQ", "PLIN1", "FABP4", "LPL", "CD36", "CFD"),
)
_GRADIENT_GENES = ("MKI67", "TOP2A")
_BACKGROUND_GENES = ("ACTB", "GAPDH", "B2M", "MALAT1", "VIM", "EEF1A1", "TPT1", "FTL", "RPLP0", "MGP")
_MAX_MARKERS = 6

# (background RGB, ink RGB) in stain-like pinks and purples, one pair per texture family.
_PALETTE = (
    ((226, 150, 186), (86, 52, 134)),  # epithelium: pink cytoplasm, large purple nuclei
    ((246, 204, 218), (204, 96, 146)),  # stroma: pale pink, deep-pink collagen fibres
    ((206, 176, 214), (58, 38, 108)),  # immune: lilac, small dark lymphocyte nuclei
    ((250, 242, 246), (214, 150, 182)),  # adipose: almost white, thin pink membranes
)
# Relative sequencing depth per texture family (adipose yields few UMIs in real data too).
_DEPTH = (1.2, 0.9, 1.1, 0.5)


def _interp_matrix(n_out: int, step_px: float, n_grid: int) -> sparse.csr_matrix:
    """Linear interpolation from a coarse grid with node spacing ``step_px`` to ``n_out`` pixel centres."""
    pos = (np.arange(n_out) + 0.5) / step_px
    lo = np.minimum(np.floor(pos).astype(np.int64), n_grid - 2)
    frac = (pos - lo).astype(np.float32)
    # Smoothstep weights hide the grid lines that plain bilinear interpolation leaves in value noise.
    frac = frac * frac * (3 - 2 * frac)
    rows = np.repeat(np.arange(n_out), 2)
    cols = np.stack([lo, lo + 1], axis=1).ravel()
    vals = np.stack([1 - frac, frac], axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_grid))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Value noise in about [-1, 1] with features of ``scale_px`` pixels, built separably so it is cheap."""
    step = max(scale_px, 1.0)
    gh, gw = int(np.ceil(shape[0] / step)) + 2, int(np.ceil(shape[1] / step)) + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    wy, wx = _interp_matrix(shape[0], step, gh), _interp_matrix(shape[1], step, gw)
    return np.asarray((wx @ (wy @ grid).T).T, dtype=np.float32)


def _nuclei(rng, yy, xx, cell_um, radius_um, density, edge_um):
    """Round soft-edged blobs, one per occupied cell of a jittered lattice (coordinates in µm)."""
    iy, ix = (yy // cell_um).astype(np.int64), (xx // cell_um).astype(np.int64)
    gh, gw = int(iy.max()) + 1, int(ix.max()) + 1
    r = radius_um * rng.uniform(0.75, 1.25, size=(gh, gw))
    # Keeping each blob inside its lattice cell means only the own cell's centre needs checking.
    room = np.maximum(cell_um - 2 * r, 0.0)
    cy = (np.arange(gh)[:, None] * cell_um + r + rng.uniform(size=(gh, gw)) * room).astype(np.float32)
    cx = (np.arange(gw)[None, :] * cell_um + r + rng.uniform(size=(gh, gw)) * room).astype(np.float32)
    r = np.where(rng.uniform(size=(gh, gw)) < density, r, 0.0).astype(np.float32)
    d = np.hypot(yy - cy[iy, ix], xx - cx[iy, ix])
    return np.clip((r[iy, ix] - d) / edge_um + 0.5, 0.0, 1.0)


def _texture(family, variant, rng, yy, xx, um_per_px):
    """Ink coverage in [0, 1] for one texture family; ``variant`` > 0 gives a related but distinct look."""
    shape = (yy.shape[0], xx.shape[1])
    edge = max(um_per_px, 0.8)
    if family == 0:  # epithelium: large, crowded nuclei
        return _nuclei(rng, yy, xx, 16.0 + 6 * variant, 5.0 + 1.5 * variant, 0.7, edge)
    if family == 1:  # stroma: wavy parallel fibres
        theta = np.deg2rad(30.0 + 50.0 * variant)
        wobble = 6.0 * _smooth_noise(rng, shape, 40.0 / um_per_px)
        # float32 constants: a float64 numpy scalar would promote the whole field to float64.
        cos, sin, freq = (np.float32(v) for v in (np.cos(theta), np.sin(theta), 2 * np.pi / 10.0))
        phase = (xx * cos + yy * sin + wobble) * freq
        return (0.5 + 0.5 * np.sin(phase)) ** 3
    if family == 2:  # immune: small dark dots, densely packed
        return _nuclei(rng, yy, xx, 8.0 + 3 * variant, 2.8 + 0.8 * variant, 0.85, edge)
    # adipose: a warped mesh of large empty cells with thin walls
    cell = 45.0 + 15.0 * variant
    wy = yy + 8.0 * _smooth_noise(rng, shape, 60.0 / um_per_px)
    wx = xx + 8.0 * _smooth_noise(rng, shape, 60.0 / um_per_px)
    fy, fx = np.abs((wy % cell) - cell / 2), np.abs((wx % cell) - cell / 2)
    wall = cell / 2 - np.maximum(fy, fx)
    return np.clip(1.0 - wall / 2.5, 0.0, 1.0).astype(np.float32)


def _programme(n_genes: int, n_types: int):
    """Gene names and per-type mean profiles; independent of the section seed."""
    if n_types < 1:
        raise ValueError(f"n_types must be at least 1, got {n_types}.")
    n_grad = len(_GRADIENT_GENES)
    if n_genes < 2 * n_types + n_grad + 1:
        raise ValueError(
            f"n_genes={n_genes} is too few for n_types={n_types}: need at least {2 * n_types + n_grad + 1} "
            "(one marker per type, the gradient genes and background genes)."
        )
    n_mark = min(_MAX_MARKERS, max(1, (n_genes - n_grad - 1) // (2 * n_types)))
    names, markers = [], {}
    for t in range(n_types):
        real = _MARKERS[t] if t < len(_MARKERS) else ()
        block = [real[k] if k < len(real) else f"TOYG{len(names) + k:03d}" for k in range(n_mark)]
        markers[_type_name(t)] = block
        names += block
    grad_start = len(names)
    names += list(_GRADIENT_GENES)
    bg_real = iter(_BACKGROUND_GENES)
    names += [next(bg_real, None) or f"TOYG{i:03d}" for i in range(len(names), n_genes)]

    rng = np.random.default_rng(_PROGRAMME_SEED)
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes)
    base[grad_start : grad_start + n_grad] *= 4.0  # keep the gradient readable at toy depth
    # Types also differ mildly outside their markers, as real cell types do.
    profiles = base[None, :] * rng.lognormal(0.0, 0.2, size=(n_types, n_genes))
    for t in range(n_types):
        idx = slice(t * n_mark, (t + 1) * n_mark)
        # Fold over each gene's own baseline, so markers span many expression levels as in real data.
        profiles[t, idx] = base[idx] * rng.uniform(20.0, 40.0, size=n_mark)
    return names, markers, list(range(grad_start, grad_start + n_grad)), profiles


def _type_name(t: int) -> str:
    return _TYPE_NAMES[t] if t < len(_TYPE_NAMES) else f"type_{t}"


def _appearance(n_types: int):
    """Colours, texture family and variant per type; shared by all seeds."""
    rng = np.random.default_rng(_PROGRAMME_SEED + 1)
    bg, ink, fam, var = [], [], [], []
    for t in range(n_types):
        f, v = t % len(_PALETTE), t // len(_PALETTE)
        shift = rng.uniform(-25, 25, size=3) if v else np.zeros(3)
        bg.append(np.clip(np.array(_PALETTE[f][0]) + shift, 0, 255))
        ink.append(np.clip(np.array(_PALETTE[f][1]) + shift, 0, 255))
        fam.append(f)
        var.append(v)
    return np.array(bg, np.float32), np.array(ink, np.float32), fam, var


def toy_tissue(
    *,
    n_rows: int = 20,
    n_cols: int = 20,
    n_genes: int = 120,
    n_types: int = 4,
    um_per_px: float = 1.0,
    spot_diameter_um: float = 55.0,
    spot_spacing_um: float = 100.0,
    mean_umi: float = 2000,
    sample_id: str = "toy",
    seed: int = 0,
) -> SpatialData:
    """Synthetic H&E section with spot expression, laid out like the real readers' output.

    A few tissue types fill contiguous, irregular regions (warped Voronoi cells of random seeds
    placed on spots). Each type has its own stain-like colour **and** texture at the scale of a spot:
    crowded large purple nuclei (``epithelium``), thin wavy pink fibres at an angle (``stroma``),
    small dense dark dots (``immune``) and a pale mesh of large empty cells (``adipose``); further
    types reuse these families with other angles, sizes and tints. Expression follows the same
    regions: each type highly expresses its own marker genes (real symbols such as ``KRT19``,
    ``COL1A1``, ``PTPRC``, ``ADIPOQ`` for the first four types) on a shared background, spots
    mix types by the area they cover, and ``MKI67``/``TOP2A`` follow a smooth gradient across the
    section. Counts are negative binomial around per-spot size factors near ``mean_umi``.

    A joint image–expression model can therefore learn, from ~100 µm tiles, which texture and colour
    go with which marker programme, and a regression head can also pick up the gradient (which the
    image does not show, so it bounds what image-only prediction can reach). The true type of each
    spot (the type under its centre) is in ``obs["tissue_type"]``; markers and gradient genes are in
    ``uns["toy_tissue"]``. Gene names, programmes and appearance do not depend on ``seed``, so
    sections with different seeds are compatible; ``seed`` changes layout, textures and counts.

    Parameters
    ----------
    n_rows, n_cols
        Size of the regular spot grid.
    n_genes
        Number of genes; at least ``2 * n_types + 3``.
    n_types
        Number of tissue types.
    um_per_px
        Image resolution in micrometres per pixel.
    spot_diameter_um, spot_spacing_um
        Spot diameter and centre-to-centre distance in micrometres.
    mean_umi
        Typical total UMI count of a spot.
    sample_id
        Section id; names the elements and the coordinate system.
    seed
        Seed of the layout, textures and counts.

    Returns
    -------
    SpatialData with image ``f"{sample_id}_image"``, circles ``f"{sample_id}_spots"`` and table
    ``"table"`` as described in ``docs/data_layout.md``. A margin of one spot spacing surrounds the
    grid, so the image is ``(n * spot_spacing_um + 2 * spot_spacing_um) / um_per_px`` pixels per side.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=10, n_cols=10, seed=1)
    >>> int(sdata.tables["table"].obs["tissue_type"].value_counts().sum())
    100

    """
    if min(n_rows, n_cols) < 1 or min(um_per_px, spot_diameter_um, spot_spacing_um, mean_umi) <= 0:
        raise ValueError("Grid sizes, resolution, spot size, spacing and mean_umi must be positive.")
    names, markers, grad_idx, profiles = _programme(n_genes, n_types)
    bg_rgb, ink_rgb, families, variants = _appearance(n_types)
    rng = np.random.default_rng(seed)

    margin = spot_spacing_um
    height_um, width_um = n_rows * spot_spacing_um + 2 * margin, n_cols * spot_spacing_um + 2 * margin
    h, w = round(height_um / um_per_px), round(width_um / um_per_px)
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    cy_um = margin + (rows + 0.5) * spot_spacing_um
    cx_um = margin + (cols + 0.5) * spot_spacing_um

    label = _regions(rng, (h, w), um_per_px, cy_um, cx_um, spot_spacing_um, n_types)
    image = _render(rng, label, bg_rgb, ink_rgb, families, variants, um_per_px)
    spot_type = label[_px(cy_um, um_per_px, h), _px(cx_um, um_per_px, w)]
    comp = _spot_composition(label, cy_um, cx_um, spot_diameter_um / 2, um_per_px, n_types)
    u = _gradient(rng, cy_um, cx_um)
    counts = _counts(rng, comp, profiles, grad_idx, u, _sizes(rng, comp, mean_umi, families))

    to_um = {sample_id: Scale([um_per_px, um_per_px], axes=("y", "x"))}
    image_name, shapes_name = f"{sample_id}{IMAGE_SUFFIX}", f"{sample_id}{SHAPES_SUFFIX}"
    img = rgb_image_element(np.moveaxis(image, 0, -1), to_um)
    xy_px = np.stack([cx_um, cy_um], axis=1) / um_per_px
    shapes = ShapesModel.parse(
        xy_px,
        geometry=0,
        radius=np.full(len(xy_px), spot_diameter_um / 2 / um_per_px),
        index=np.arange(len(xy_px)),
        transformations=to_um,
    )
    adata = _table(counts, names, rows, cols, spot_type, n_types, sample_id, shapes_name)
    adata.obsm[SPATIAL_KEY] = xy_px
    adata.uns[UNS_KEY] = {
        SPOT_DIAMETER_KEY: {sample_id: float(spot_diameter_um)},
        UM_PER_PX_KEY: {sample_id: float(um_per_px)},
    }
    adata.uns[TOY_UNS_KEY] = {"markers": markers, "gradient_genes": [names[i] for i in grad_idx]}
    table = TableModel.parse(adata, region=shapes_name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images={image_name: img}, shapes={shapes_name: shapes}, tables={TABLE_KEY: table})


def _render(rng, label, bg_rgb, ink_rgb, families, variants, um_per_px):
    """RGB ``uint8`` image ``(3, y, x)``: per-type background and ink mixed by the type's texture."""
    h, w = label.shape
    # Pixel-centre coordinates in µm, as broadcastable column/row vectors: every pattern is defined
    # physically, so a section scanned at another resolution shows the same tissue.
    ys = ((np.arange(h, dtype=np.float32) + 0.5) * np.float32(um_per_px))[:, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5) * np.float32(um_per_px))[None, :]
    ink = np.zeros((h, w), np.float32)
    for t in range(len(families)):
        mask = label == t
        rows_t, cols_t = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows_t) == 0:
            continue
        # Only the bounding box of the type's region is textured, to keep the build fast.
        box = np.s_[rows_t[0] : rows_t[-1] + 1, cols_t[0] : cols_t[-1] + 1]
        tex = _texture(families[t], variants[t], rng, ys[box[0]], xs[:, box[1]], um_per_px)
        np.copyto(ink[box], tex, where=mask[box])
    stain = 1.0 + 0.06 * _smooth_noise(rng, (h, w), 300.0 / um_per_px)
    grain = np.float32(5.0) * rng.standard_normal(size=(h, w), dtype=np.float32)
    image = np.empty((3, h, w), np.uint8)
    for c in range(3):
        chan = bg_rgb[label, c] + (ink_rgb[label, c] - bg_rgb[label, c]) * ink
        image[c] = np.clip(chan * stain + grain, 0, 255)
    return image


def _px(v_um: np.ndarray, um_per_px: float, n: int) -> np.ndarray:
    return np.clip((np.asarray(v_um) / um_per_px).astype(np.int64), 0, n - 1)


def _regions(rng, shape, um_per_px, cy_um, cx_um, spacing_um, n_types):
    """Type label per pixel: warped Voronoi cells of seeds placed on spots.

    The warp makes borders irregular. Each seed sits at the warped position of its spot, so every
    seed (hence every type) owns at least that spot. Labels are computed on a ~2 µm grid and
    repeated up to full resolution, which is invisible under the textures and 4x cheaper at 1 µm/px.
    """
    k = max(1, round(2.0 / um_per_px))
    hc, wc = -(-shape[0] // k), -(-shape[1] // k)
    ys = ((np.arange(hc, dtype=np.float32) + 0.5) * np.float32(k * um_per_px))[:, None]
    xs = ((np.arange(wc, dtype=np.float32) + 0.5) * np.float32(k * um_per_px))[None, :]
    n_seeds = min(len(cy_um), max(n_types, round(len(cy_um) / 50)))
    seed_spots = _spread_out(rng, cy_um, cx_um, n_seeds)
    amp, scale = np.float32(0.9 * spacing_um), 3 * spacing_um / (k * um_per_px)
    wy = amp * _smooth_noise(rng, (hc, wc), scale) + ys
    wx = amp * _smooth_noise(rng, (hc, wc), scale) + xs
    py, px = _px(cy_um[seed_spots], k * um_per_px, hc), _px(cx_um[seed_spots], k * um_per_px, wc)
    seed_type = rng.permutation(n_seeds) % n_types
    label = _voronoi(wy, wx, wy[py, px], wx[py, px], seed_type)
    return np.repeat(np.repeat(label, k, axis=0), k, axis=1)[: shape[0], : shape[1]]


def _spread_out(rng, cy, cx, k):
    """Pick ``k`` spots far apart (best of several random candidates each time)."""
    chosen = [int(rng.integers(len(cy)))]
    for _ in range(k - 1):
        cand = rng.choice(len(cy), size=min(len(cy), 12), replace=False)
        d = np.min(np.hypot(cy[cand, None] - cy[chosen][None], cx[cand, None] - cx[chosen][None]), axis=1)
        chosen.append(int(cand[np.argmax(d)]))
    return np.array(chosen)


def _voronoi(yy, xx, sy, sx, seed_type):
    best = np.full(yy.shape, np.inf, np.float32)
    label = np.zeros(yy.shape, np.uint8 if seed_type.max() < 256 else np.int32)
    d, tmp = np.empty_like(best), np.empty_like(best)
    closer = np.empty(yy.shape, bool)
    for y0, x0, t in zip(sy, sx, seed_type, strict=True):
        np.subtract(yy, np.float32(y0), out=d)
        np.multiply(d, d, out=d)
        np.subtract(xx, np.float32(x0), out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        d += tmp
        np.less(d, best, out=closer)
        np.copyto(best, d, where=closer)
        np.copyto(label, label.dtype.type(t), where=closer)
    return label


def _spot_composition(label, cy_um, cx_um, radius_um, um_per_px, n_types):
    """Fraction of each type under each spot, from a fixed pattern of points inside the disk."""
    g = np.linspace(-1, 1, 9)
    oy, ox = np.meshgrid(g, g, indexing="ij")
    inside = oy**2 + ox**2 <= 1
    oy, ox = oy[inside] * radius_um, ox[inside] * radius_um
    lab = label[
        _px(cy_um[:, None] + oy[None], um_per_px, label.shape[0]),
        _px(cx_um[:, None] + ox[None], um_per_px, label.shape[1]),
    ]
    return np.stack([(lab == t).mean(axis=1) for t in range(n_types)], axis=1)


def _gradient(rng, cy_um, cx_um):
    """Position in [-1, 1] of each spot along a random direction across the section."""
    angle = rng.uniform(0, 2 * np.pi)
    proj = cy_um * np.sin(angle) + cx_um * np.cos(angle)
    return (proj - proj.min()) / max(np.ptp(proj), 1e-9) * 2 - 1


def _sizes(rng, comp, mean_umi, families):
    """Expected UMI total of each spot: the type mix's relative depth times lognormal noise."""
    depth = comp @ np.array([_DEPTH[f] for f in families])
    depth /= depth.mean()  # keep the section's mean depth at mean_umi whatever the type mix
    return mean_umi * depth * rng.lognormal(-0.5 * 0.3**2, 0.3, size=len(comp))


def _counts(rng, comp, profiles, grad_idx, u, size):
    rates = comp @ profiles
    # The gradient runs along a random direction: about 20-fold from one side of the section to the other.
    rates[:, grad_idx] *= np.exp(1.5 * u)[:, None]
    p = rates / rates.sum(axis=1, keepdims=True)
    lam = size[:, None] * p
    # Gamma-Poisson with shape 10: overdispersed like UMI counts.
    return rng.poisson(rng.gamma(10.0, lam / 10.0)).astype(np.int32)


def _table(counts, names, rows, cols, spot_type, n_types, sample_id, shapes_name) -> AnnData:
    n = len(rows)
    spot_ids = [f"{c}x{r}" for r, c in zip(rows, cols, strict=True)]
    type_names = [_type_name(t) for t in range(n_types)]
    obs = pd.DataFrame(
        {
            REGION_KEY: pd.Categorical([shapes_name] * n),
            INSTANCE_KEY: np.arange(n),
            SPOT_ID_KEY: spot_ids,
            SAMPLE_KEY: pd.Categorical([sample_id] * n),
            ARRAY_ROW_KEY: rows.astype(np.int64),
            ARRAY_COL_KEY: cols.astype(np.int64),
            "tissue_type": pd.Categorical.from_codes(spot_type.astype(np.int64), categories=type_names),
        },
        index=[f"{sample_id}_{s}" for s in spot_ids],
    )
    return AnnData(
        X=sparse.csr_matrix(counts, dtype=np.int32), obs=obs, var=pd.DataFrame(index=pd.Index(names))
    )

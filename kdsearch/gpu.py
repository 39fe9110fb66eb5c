"""GPUs: can torch use CUDA where the trials run, how much memory a GPU has, each trial's share.

Ray counts GPUs whether or not torch can use them. With a CPU-only torch wheel, or an NVIDIA
driver older than the wheel's CUDA needs, every trial holds a GPU share and trains on the CPU.
`probe` asks a Ray task on a GPU node, which is the trials' own environment. `explain` turns a
failure into one line that says why and what to do.

The automatic share packs trials onto a GPU as far as its memory allows, up to `PACKING_LIMIT`
trials a GPU. Each trial needs its estimated memory plus its process's CUDA context, and all
together stay within `MEMORY_FRACTION` of the GPU. For small students memory is rarely the
limit. Kernel launches and the Python step loop are. How many trials a GPU runs faster side by
side is measured by `bench/gpu_packing.py` (run by `bench/gpu_check.sh`). That benchmark has
not run on a GPU yet, so `PACKING_LIMIT` is not a measured value. `search.trials_per_gpu` or
`search.gpus_per_trial` overrides it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import ray
import torch

from kdsearch.builders import meta_student
from kdsearch.config import ExperimentConfig, largest
from kdsearch.data import Dataset
from kdsearch.errors import one_line
from kdsearch.models import count_parameters
from kdsearch.results import searched_widths

PACKING_LIMIT = 16  # trials a GPU at most (not measured on a GPU yet; see the module docstring)
MEMORY_FRACTION = 0.8  # of a GPU's memory the packed trials may plan to fill
CUDA_CONTEXT_BYTES = 600 * 2**20  # each trial process's CUDA context and torch's workspace
UNKNOWN_MEMORY = 16 * 2**30  # a GPU's memory when no probe could tell (a modest GPU)
RAY_PRECISION = 10**4  # Ray keeps resource amounts to 4 decimals
PROBE_SECONDS = 60.0


# --------------------------------------------------------------------------- the share
def tile(k: int) -> float:
    """Return the share of a GPU for k trials on it: 1/k rounded down to Ray's 4 decimals.

    Rounding down makes k shares fit on one GPU after Ray's own rounding (1/3 becomes 0.3333,
    not 0.3334)."""
    return math.floor(RAY_PRECISION / k) / RAY_PRECISION


def trial_bytes(cfg: ExperimentConfig, data: Dataset,
                student: Callable[..., Any] | None = None) -> int:
    """Return an estimate of a trial's GPU memory, in bytes.

    It adds up the data, the widest student's weights, gradients and Adam's two moments, its
    activations at the largest batch (forward and backward), and the process's CUDA context."""
    model = meta_student(cfg, data.input_shape, data.num_classes,
                         width=max(searched_widths(cfg)), factory=student)
    data_bytes = (data.train.x.numel() + data.val.x.numel()) * 4
    batch = int(largest(cfg, "batch_size", cfg.training.batch_size))  # the largest searched
    act = batch * sum(m.out_channels if hasattr(m, "out_channels") else 0
                      for m in model.modules()) * math.prod(data.input_shape[1:])
    return data_bytes + count_parameters(model) * 16 + act * 4 * 3 + CUDA_CONTEXT_BYTES


def gpu_share(cfg: ExperimentConfig, data: Dataset, memory: int | None,
              student: Callable[..., Any] | None = None) -> float:
    """Return each trial's share of a GPU.

    It is search.gpus_per_trial when set, else 1/search.trials_per_gpu when that is set.
    Otherwise a GPU of `memory` bytes (None: unknown) takes as many trials as fit, at most
    PACKING_LIMIT."""
    s = cfg.search
    if s.gpus_per_trial is not None:
        return s.gpus_per_trial
    if s.trials_per_gpu is not None:
        return tile(s.trials_per_gpu)
    need = trial_bytes(cfg, data, student)
    fit = math.floor((memory or UNKNOWN_MEMORY) * MEMORY_FRACTION / need)
    return tile(max(1, min(PACKING_LIMIT, fit)))


# --------------------------------------------------------------------------- can torch use it
@dataclass(frozen=True)
class CudaCheck:
    """What torch makes of the GPU in one process: whether it is `usable`, and if not, `why`."""

    usable: bool
    where: str  # "trials" (a Ray task on a GPU node) or "driver"
    why: str | None = None
    gpu: str | None = None  # the device's name
    memory: int | None = None  # bytes
    torch_version: str = torch.__version__
    torch_cuda: str | None = torch.version.cuda  # the CUDA version the wheel was built for

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_cuda(where: str) -> CudaCheck:
    """Check torch's CUDA in this process. When it works, record the device's name and memory."""
    if torch.version.cuda is None:
        return CudaCheck(False, where, f"this torch ({torch.__version__}) is a CPU-only build")
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()  # raises with torch's own reason (no driver, a driver too old)
            why = "torch.cuda.is_available() is false"
        except Exception as e:
            why = one_line(e) or type(e).__name__
        return CudaCheck(False, where, why)
    props = torch.cuda.get_device_properties(0)
    return CudaCheck(True, where, None, props.name, int(props.total_memory))


def _probe_task() -> dict[str, Any]:
    return check_cuda("trials").as_dict()


_PROBED: dict[str, CudaCheck] = {}  # by cluster and job, so a driver that searches again asks once


def probe(timeout: float = PROBE_SECONDS) -> CudaCheck | None:
    """Run `check_cuda` in a Ray task on a GPU node, as a trial would run there.

    Return None when no GPU came free within `timeout` seconds (a busy cluster)."""
    context = ray.get_runtime_context()
    job = f"{context.gcs_address} {context.get_job_id()}"
    if job in _PROBED:
        return _PROBED[job]
    task = ray.remote(_probe_task).options(num_gpus=1 / RAY_PRECISION, max_retries=0)
    ref = task.remote()
    done, _ = ray.wait([ref], timeout=timeout)
    if not done:
        ray.cancel(ref, force=True)
        return None
    _PROBED[job] = CudaCheck(**ray.get(ref))
    return _PROBED[job]


def explain(unusable: list[CudaCheck], gpus: float, *, planned_for_cpu: bool) -> str:
    """Return one line for a cluster whose GPUs torch cannot use in the trials, the driver, or
    both. The line says why, what runs on the CPU instead, and what to do."""
    check = unusable[0]
    where = " and ".join("this driver" if c.where == "driver" else "the trials" for c in unusable)
    whys = list(dict.fromkeys(f"{c.why}" for c in unusable))
    then = []
    if any(c.where == "trials" for c in unusable):
        then.append("the trials are planned for the CPU" if planned_for_cpu
                    else "the trials hold their GPU share and train on the CPU")
    if any(c.where == "driver" for c in unusable):
        then.append("the teacher trains and the final evaluation tests on this CPU")
    fix = ("install a torch wheel built for this machine's CUDA driver (`nvidia-smi` names the "
           "driver's CUDA version; a torch wheel for CUDA 13.0 needs driver 580 or newer)"
           if check.torch_cuda else "install a torch wheel built with CUDA")
    return (f"warning: Ray reports {gpus:g} GPU{'' if gpus == 1 else 's'}, but torch "
            f"{check.torch_version} cannot use CUDA in {where}: {'; '.join(whys)}; "
            f"{', and '.join(then)}. To use the GPU, {fix}; to plan for the CPU and silence "
            f"this, --set search.gpus_per_trial=0")

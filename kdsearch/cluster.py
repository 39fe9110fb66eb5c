"""Ray start-up and the cluster: the address, the resources a trial takes.

`init_ray` joins the cluster at `--address` (or `$RAY_ADDRESS`), or starts a Ray of kdsearch's
own. It refuses an address that nothing listens at in seconds, not minutes. `trial_resources`
works out what each trial (and each final retraining) takes: `search.cpus_per_trial`, a share of
a GPU (`gpu.gpu_share`, where `check_gpus` finds that torch can use the GPUs), and how many
trials run at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import torch

from kdsearch.config import ExperimentConfig
from kdsearch.data import Dataset
from kdsearch.gpu import CudaCheck, check_cuda, gpu_share, probe
from kdsearch.ray_workarounds import (STATE_LOGGER, DropTmpFileRace, end_orphans,
                                      register_session, unregister_session, untested_ray)
from kdsearch.results import SearchError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Resources:
    """What each trial and final retraining takes, and how many trials run at once."""

    cpus_per_trial: float
    gpus_per_trial: float  # 0 on a cluster without GPUs
    concurrency: int


def trial_resources(cfg: ExperimentConfig, data: Dataset, hardware: dict[str, Any],
                    cuda: list[CudaCheck] | None = None,
                    student: Callable[..., Any] | None = None) -> Resources:
    """Return the resources of `cfg`'s trials on a cluster of `hardware` (see `hardware()`).

    `cuda` is what `check_gpus` found about torch's CUDA in a trial. If torch cannot use the
    cluster's GPUs in a trial, the trials are planned for the CPU, unless the config sets a
    share."""
    trials = next((c for c in cuda or [] if c.where == "trials"), None)
    automatic = cfg.search.gpus_per_trial is None and cfg.search.trials_per_gpu is None
    gpus = 0.0
    if hardware["gpus"] and not (automatic and trials is not None and not trials.usable):
        gpus = gpu_share(cfg, data, trials.memory if trials else None, student)
    # Tune runs an Optuna searcher's trials one at a time unless told how many may run at once
    concurrency = cfg.search.max_concurrent_trials or fit_concurrency(
        hardware, cfg.search.cpus_per_trial, gpus)
    return Resources(cfg.search.cpus_per_trial, gpus, concurrency)


def check_gpus(cfg: ExperimentConfig, hardware: dict[str, Any]) -> list[CudaCheck]:
    """Check torch's CUDA where Ray reports GPUs, unless the config sets gpus_per_trial: 0.

    Check it in a trial (`gpu.probe`). Also check it in this driver when the driver's own node
    has GPUs, since the teacher trains and the final evaluation tests there."""
    if not hardware["gpus"] or cfg.search.gpus_per_trial == 0:
        return []
    found = [c for c in [probe()] if c is not None]
    here = ray.get_runtime_context().get_node_id()
    if any(n.get("NodeID") == here and n.get("Resources", {}).get("GPU", 0)
           for n in ray.nodes() if n.get("Alive")):
        found.append(check_cuda("driver"))
    return found


def fit_concurrency(hardware: dict[str, Any], cpus_per_trial: float, gpus_per_trial: float
                    ) -> int:
    """Return how many trials at once the cluster's CPUs (and GPU shares) hold, at least 1."""
    n = math.floor(hardware["cpus"] / cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        n = min(n, math.floor(hardware["gpus"] / gpus_per_trial + 1e-9))
    return max(1, n)


# --------------------------------------------------------------------------- Ray start-up
def quiet_ray() -> None:
    """Keep Ray's and Tune's output to errors, and have Tune save its state often."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # experiment state saved often, so a killed driver loses (almost) no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    state_logger = logging.getLogger(STATE_LOGGER)
    if not any(isinstance(f, DropTmpFileRace) for f in state_logger.filters):
        state_logger.addFilter(DropTmpFileRace())
    warnings.filterwarnings("ignore", module="ray")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # a resumed trial reports again the epochs after its checkpoint, which the restored Optuna
    # study already has (OptunaSearch passes them on). Optuna keeps the first value and warns.
    # The warning is harmless.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this")




def host_port(address: str) -> tuple[str, int] | None:
    """Return (host, port) for 'HOST:PORT' or 'ray://HOST:PORT', and None for other forms."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address that nothing listens at. ray.init retries for minutes."""
    if address in ("auto", "local"):
        return
    hp = host_port(address)
    if hp is None or not 0 < hp[1] < 65536:
        raise SearchError(f"Ray cluster address {address!r} is not auto, HOST:PORT or "
                          f"ray://HOST:PORT (a port in 1-65535); pass the address printed by "
                          f"`ray start --head`, or omit --address for a local Ray")
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
        raise SearchError(f"cannot reach the Ray cluster at {address!r} ({why}); check the "
                          f"address printed by `ray start --head`, or omit --address for a "
                          f"local Ray") from None


def ray_address(address: str | None) -> str:
    """Return --address, else $RAY_ADDRESS, else "local" (a Ray of kdsearch's own).

    ray.init() alone would join whatever cluster the last `ray start` on this machine left in
    /tmp/ray/ray_current_cluster, alive or not."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


# what a user's folder shipped to the cluster leaves out: weights, arrays, data, results
SHIP_EXCLUDES = ["*.pt", "*.pth", "*.ckpt", "*.npy", "*.npz", "*.safetensors", "*.bin", "*.h5",
                 "*.tar", "*.gz", "*.zip", ".git/", ".venv/", "__pycache__/", "results/",
                 "data/", "datasets/"]


def init_ray(address: str | None, code_dir: str | None = None) -> Path | bool:
    """Connect to Ray, or start it.

    Return False when Ray was running already. Otherwise return what `ray_running` shuts down
    afterwards: True for a cluster joined, and the session's record for a local Ray started
    here (`ray_workarounds.register_session`, or True when it cannot be recorded). When joining
    a cluster, `code_dir` (the folder of the user's modules) goes with the job to every node as
    Ray's `runtime_env` working_dir. So worker nodes need only kdsearch installed."""
    quiet_ray()
    if ray.is_initialized():
        return False
    note = untested_ray(ray.__version__)  # said once per Ray start, not once per search
    if note:
        log.warning(note)
    address = ray_address(address)
    check_reachable(address)
    # kdsearch's own Ray starts no idle workers for the driver. Tune runs every trial in a fresh
    # actor process and never uses them. They would only spend ~1 s of CPU importing Ray while
    # the trial actors start (bench/RESULTS.md, item 3).
    own: dict[str, Any] = {"_system_config": {"prestart_worker_first_driver": False}} \
        if address == "local" else {}
    if address != "local" and code_dir:
        own["runtime_env"] = {"working_dir": code_dir, "excludes": SHIP_EXCLUDES}
    if address == "local":  # end what a killed kdsearch's Ray left running (ray_workarounds, 8)
        end_orphans(log.info)
    try:
        context = ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                           include_dashboard=False, configure_logging=True, **own)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "runtime_env" in own and ("working_dir" in str(e) or "package" in str(e).lower()):
            raise SearchError(f"cannot ship {code_dir} (the space file's folder, with the "
                              f"modules it names) to the Ray cluster at {address!r}: "
                              f"{first[:160]}; keep the space file and its modules in a small "
                              f"folder of their own") from None
        raise SearchError(f"cannot reach the Ray cluster at {address!r}: {first[:160]}; start "
                          f"it (ray start --head) or omit --address for a local Ray") from None
    if address == "local":
        return register_session(context.address_info["session_dir"]) or True
    return True


def hardware() -> dict[str, Any]:
    """Return the cluster's CPUs, GPUs and live nodes, the driver's machine and torch's version."""
    res = ray.cluster_resources()
    return {"cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "driver": f"{platform.node()} {platform.processor() or platform.machine()}",
            "torch": torch.__version__}


def check_resources(cfg: ExperimentConfig) -> None:
    """Check that a trial fits on some node. A trial that fits on none would wait forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if cfg.search.cpus_per_trial > cpus:
        raise SearchError(f"search.cpus_per_trial = {cfg.search.cpus_per_trial:g} but the largest "
                          f"Ray node has {cpus:g} CPUs; lower it, e.g. --set "
                          f"search.cpus_per_trial={max(cpus, 1):g}")
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    want = cfg.search.gpus_per_trial
    if gpus and want is not None and want > gpus:  # without GPUs the trials run on CPUs
        raise SearchError(f"search.gpus_per_trial = {want:g} but the largest Ray node has "
                          f"{gpus:g} GPUs; lower it, or leave it null for a share worked out "
                          f"from the model")


@contextlib.contextmanager
def ray_running(address: str | None, *, code_dir: str | None = None) -> Iterator[None]:
    """Run the block with Ray: joined at `address` (with `code_dir` shipped, see `init_ray`), or
    started here. Shut Ray down afterwards, unless it was running already."""
    if not ray.is_initialized():  # a few seconds with nothing else to show
        where = ray_address(address)
        log.info("ray: starting a local Ray" if where == "local" else f"ray: connecting to {where}")
    started = init_ray(address, code_dir)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
            unregister_session(started if isinstance(started, Path) else None)

"""One trainer for every dsvae model.

The loop is short on purpose (nanoGPT style): pick the global batch of this step
from a per-epoch permutation, keep this rank's slice, run every optimisation phase
of the model (forward through the DDP wrapper when distributed, backward, clip,
step), log, checkpoint, write sample GIFs. Everything else is setup.

Data-parallel runs use ``torchrun``: ``torchrun --nproc_per_node N -m dsvae train ...``;
``batch_size`` is the global batch, split evenly across ranks; only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dsvae import __version__
from dsvae.data.dataset import SpritesDataset, to_float
from dsvae.data.mixing import dataset_colour_neighbours
from dsvae.errors import DsvaeError, TrainingDiverged
from dsvae.models import SequenceModel, build_model, model_class
from dsvae.models.presets import get_preset
from dsvae.training import checkpoint as ckpt_io
from dsvae.training.batchnorm import batchnorm_layers, recalibrate_state
from dsvae.training.ema import WeightAverage
from dsvae.training.polish import polish_decoder
from dsvae.training.static_prior import BUFFERS as STATIC_PRIOR_BUFFERS
from dsvae.training.static_prior import fit_static_prior, reset_static_prior
from dsvae.training.runtime import apply_cpu_allocator_settings, speed_up

#: Options that may change when a run is resumed; everything else comes from the saved run.
RESUMABLE = ("epochs", "max_steps", "max_minutes", "device", "amp", "resident", "workers", "progress", "log_every",
             "checkpoint_every", "sample_every", "keep_checkpoints", "tensorboard", "channels_last", "compile",
             "ema_decay", "bn_recalibrate", "polish_minutes")
#: Options of a call that name the run itself rather than how it trains.
_RUN_NAMING = ("data", "out", "resume", "overwrite")


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` means "the preset's default"."""

    data: str = ""
    out: str = ""
    model: str = "dsvae"
    preset: str = "paper"
    model_config: dict[str, Any] = field(default_factory=dict)
    epochs: float | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_schedule: str | None = None  # None: the preset's, else constant
    min_lr_ratio: float = 0.05
    lr_decay_end: float = 1.0  # share of the budget after which a decay holds at min_lr_ratio
    ema_decay: float | None = None  # None: the preset's, else 0 = no weight average
    bn_recalibrate: int | None = None  # batches to recompute the weight average's batch-norm statistics with at the end;
    # None: the preset's, else 0 (off)
    polish_minutes: float | None = None  # after training, refit the decoder (of the weight average, when kept) to the
    # posterior means for this long (dsvae.training.polish); None: the preset's, else 0 (off)
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    device: str = "auto"
    seed: int = 0
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    limit: int | None = None
    resident: bool = True
    workers: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 1000
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_dir: Path
    rank: int
    step: int
    metrics: dict[str, float]
    model: SequenceModel
    seconds: float
    bn_recalibrated: int = 0  # batches the batch-norm statistics were recomputed over at the end (0: not done)
    polished: dict[str, Any] | None = None  # the decoder polish's record (None: not done, or not on this rank)
    static_prior: dict[str, Any] | None = None  # the static prior fit's records (None: not done, or not on this rank)


# ----------------------------------------------------------------------------------
# setup helpers
# ----------------------------------------------------------------------------------
def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise DsvaeError("--device cuda was asked for, but no CUDA GPU is available")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise DsvaeError(f"unknown device {choice!r} (use auto, cpu or cuda)")
    return torch.device(choice)


class SlowBf16(UserWarning):
    """bf16 autocast was asked for on a CPU without native bf16 arithmetic, where it is far slower than float32."""


def cpu_has_native_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (oneDNN's check: AVX-512 or AMX on x86, bf16 on Arm),
    where bf16 autocast speeds training up; elsewhere (an AVX2-only x86) it runs ~25x slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_slow_bf16(device: torch.device) -> None:
    """Warn (:class:`SlowBf16`) that bf16 autocast on ``device`` will be slow: a CPU without native bf16."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(SlowBf16("bf16 autocast was asked for, but this CPU has no native bf16 arithmetic (no "
                               "AVX-512 / AMX): it runs many times slower than float32 here (~25x for a cdsvae "
                               "training step, BENCHMARKS.md section 2); use --amp off"), stacklevel=3)


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if choice in ("off", "none", "fp32"):
        return None
    if choice == "bf16":
        warn_if_slow_bf16(device)
        return torch.bfloat16
    raise DsvaeError(f"unknown --amp {choice!r} (use auto, bf16 or off)")


def build_optimizers(model: SequenceModel, lr: float, weight_decay: float = 0.0) -> dict[str, torch.optim.Optimizer]:
    """One Adam per optimisation phase of ``model`` (with the phase's extra options)."""
    return {
        phase: torch.optim.Adam(model.phase_parameters(phase), lr=lr, weight_decay=weight_decay,
                                **model.optimizer_options(phase))
        for phase in model.phases
    }


def optimisation_step(wrapped: torch.nn.Module, model: SequenceModel, optimizers: Mapping[str, torch.optim.Optimizer],
                      batch: Mapping[str, torch.Tensor], device_type: str, autocast_dtype: torch.dtype | None,
                      grad_clip: float) -> dict[str, dict[str, torch.Tensor]]:
    """One training step: every phase of the model (forward through ``wrapped``, backward, clip, Adam step).

    ``wrapped`` is the model itself or what calls it (DDP, ``torch.compile``); ``autocast_dtype``
    None means float32. Returns each phase's loss terms (not synchronised with the device).
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for phase in model.phases:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            terms = wrapped(batch, phase=phase)
        opt = optimizers[phase]
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.phase_parameters(phase), grad_clip)
        opt.step()
        out[phase] = terms
    return out


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_choice: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_choice)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device


def _resolve_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Fill preset defaults; return the resolved training config and the model config dict."""
    model_class(cfg.model)  # clear error for an unknown model
    preset_model, preset_train = get_preset(cfg.model, cfg.preset)
    values = cfg.to_dict()
    asked_recalibrate = values.get("bn_recalibrate") is not None
    for key, value in preset_train.items():
        if key == "epochs" and values.get("max_steps") is not None:
            continue  # an explicit step budget replaces the preset's epochs
        if values.get(key) is None:
            values[key] = value
    if values["epochs"] is None and values["max_steps"] is None:
        values["epochs"] = 1
    if values["lr_schedule"] is None:
        values["lr_schedule"] = "constant"
    if values["ema_decay"] is None:
        values["ema_decay"] = 0.0
    if values["polish_minutes"] is None:
        values["polish_minutes"] = 0.0
    if values["bn_recalibrate"] is None or (not asked_recalibrate and not values["ema_decay"]):
        values["bn_recalibrate"] = 0  # a preset's recalibration applies to its weight average, when one is kept
    resolved = TrainConfig(**values)
    for name in ("batch_size", "log_every", "checkpoint_every"):
        if not isinstance(getattr(resolved, name), int) or getattr(resolved, name) <= 0:
            raise DsvaeError(f"{name} must be a positive integer, got {getattr(resolved, name)!r}")
    for name in ("epochs", "max_steps", "max_minutes", "lr", "limit"):
        value = getattr(resolved, name)
        if value is not None and value <= 0:
            raise DsvaeError(f"{name} must be positive, got {value!r}")
    if not isinstance(resolved.bn_recalibrate, int) or resolved.bn_recalibrate < 0:
        raise DsvaeError(f"bn_recalibrate must be an integer >= 0 (batches; 0 = off), got {resolved.bn_recalibrate!r}")
    if resolved.bn_recalibrate and not resolved.ema_decay:
        raise DsvaeError("bn_recalibrate recomputes the batch-norm statistics of the weight average; this run keeps "
                         "none (add --ema-decay, e.g. 0.998)")
    if not isinstance(resolved.polish_minutes, (int, float)) or resolved.polish_minutes < 0:
        raise DsvaeError(f"polish_minutes must be >= 0 (0 = off), got {resolved.polish_minutes!r}")
    if resolved.sample_every < 0 or resolved.grad_clip < 0 or resolved.keep_checkpoints < 0:
        raise DsvaeError("sample_every, grad_clip and keep_checkpoints must be >= 0")
    lr_factor(resolved.lr_schedule, 0.0, resolved.min_lr_ratio)  # a clear error for an unknown schedule
    if not 0.0 <= resolved.min_lr_ratio <= 1.0:
        raise DsvaeError(f"min_lr_ratio must be in [0, 1], got {resolved.min_lr_ratio!r}")
    if not 0.0 < resolved.lr_decay_end <= 1.0:
        raise DsvaeError(f"lr_decay_end must be in (0, 1], got {resolved.lr_decay_end!r}")
    if not 0.0 <= resolved.ema_decay < 1.0:
        raise DsvaeError(f"ema_decay must be in [0, 1) (0 = off), got {resolved.ema_decay!r}")
    model_cfg = {**preset_model, **resolved.model_config}
    return resolved, model_cfg


def _check_run_dir(run_dir: Path, cfg: TrainConfig) -> bool:
    """Read-only checks of the run folder. Returns True when an existing run is resumed."""
    if cfg.resume and cfg.overwrite:
        raise DsvaeError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise DsvaeError(f"run folder {run_dir} is a file")
    nonempty = run_dir.is_dir() and any(run_dir.iterdir())
    if nonempty and not (cfg.resume or cfg.overwrite):
        raise DsvaeError(f"run folder {run_dir} already exists (use --resume to continue it or --overwrite to replace it)")
    if nonempty and cfg.overwrite and not ((run_dir / "config.json").is_file() or (run_dir / "checkpoints").is_dir()):
        raise DsvaeError(f"{run_dir} is not empty and is not a dsvae run folder; refusing to overwrite it")
    return bool(cfg.resume and (run_dir / "checkpoints" / ckpt_io.LAST).is_file())


def _create_run_dir(run_dir: Path, cfg: TrainConfig, info: DistInfo) -> None:
    """Create the run folder (rank 0), replacing an old run when asked to."""
    if info.main:
        if cfg.overwrite and run_dir.is_dir():
            shutil.rmtree(run_dir)
        for sub in ("checkpoints", "samples"):
            try:
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DsvaeError(f"cannot create run folder {run_dir / sub}: {exc.strerror}") from exc
    if info.world > 1:
        dist.barrier()


def _merge_resumed(cfg: TrainConfig, saved: Mapping[str, Any], explicit: set[str]) -> TrainConfig:
    """The saved run's config, with the options that may change on resume taken from this call.

    Any other option given explicitly must equal the saved run's: a different learning rate, model or
    batch size would be silently ignored otherwise, so it is refused with a clear error instead."""
    def plain(value: Any) -> Any:  # tuples and lists compare equal (a --set list vs a saved tuple)
        return json.loads(json.dumps(value))

    for key in sorted(explicit - set(RESUMABLE) - set(_RUN_NAMING)):
        asked, had = plain(getattr(cfg, key)), plain(saved.get(key))
        if key == "model_config":  # the overrides given must be among the run's
            had = had or {}
            if all(had.get(k) == v for k, v in asked.items()):
                continue
        elif asked == had:
            continue
        flag = "--set" if key == "model_config" else "--" + key.replace("_", "-")
        raise DsvaeError(f"{flag} cannot change when a run is resumed: {cfg.out} was trained with {had!r}, this call "
                         f"asks for {asked!r}; leave it out to continue the run, or train a new run (another --out)")
    values = dict(saved)
    for key in RESUMABLE:
        if key in explicit:
            values[key] = getattr(cfg, key)
    values.update(resume=True, overwrite=False, out=cfg.out, data=cfg.data or saved["data"])
    return TrainConfig(**values)


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, progress: float, min_ratio: float, decay_end: float = 1.0) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the training budget: 1 throughout
    for ``constant``; from 1 down to ``min_ratio`` along a half cosine or a straight line otherwise, reached
    at ``progress = decay_end`` and held from there to the end of the budget."""
    progress = min(max(progress / decay_end, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    raise DsvaeError(f"unknown learning-rate schedule {schedule!r} (known: {', '.join(LR_SCHEDULES)})")


def _set_lr(optimizers: Mapping[str, torch.optim.Optimizer], base: Mapping[str, list[float]], cfg: TrainConfig,
            progress: float) -> float:
    """Scale every param group's base rate to ``progress`` of ``cfg``'s schedule; returns the factor."""
    factor = lr_factor(cfg.lr_schedule, progress, cfg.min_lr_ratio, cfg.lr_decay_end)
    for phase, opt in optimizers.items():
        for group, lr in zip(opt.param_groups, base[phase]):
            group["lr"] = lr * factor
    return factor


def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _batches(n: int, batch: int, seed: int, start_step: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, global batch indices) for step start_step, start_step+1, ... (drop_last epochs)."""
    per_epoch = n // batch
    step = start_step
    while True:
        epoch, pos = divmod(step, per_epoch)
        perm = _epoch_permutation(seed, epoch, n)
        while pos < per_epoch:
            yield epoch, perm[pos * batch:(pos + 1) * batch]
            pos += 1
            step += 1


class _DeviceData:
    """The training split as uint8 on the training device when it fits (batched there), else read per batch."""

    def __init__(self, ds: SpritesDataset, device: torch.device, uses_labels: bool,
                 partners: torch.Tensor | None = None) -> None:
        self.ds = ds
        self.device = device
        self.uses_labels = uses_labels
        self.partners = partners  # (N, K): each sequence's partner candidates, or None (no partner frames)
        self.videos = None
        if ds.videos is not None:
            fits = True
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                fits = ds.videos.numel() < 0.5 * free
            self.videos = ds.videos.to(device) if fits else ds.videos
        self.labels = {
            "action": ds.actions.to(device),
            "attributes": ds.attributes.to(device),
        }

    def _videos(self, idx: torch.Tensor) -> torch.Tensor:
        if self.videos is not None:
            x = self.videos[idx.to(self.videos.device)]
        else:
            x = self.ds.videos_uint8(idx)
        return to_float(x.to(self.device, non_blocking=True))

    def batch(self, idx: torch.Tensor, key: int = 0) -> dict[str, torch.Tensor]:
        """The sequences ``idx``; with partners, also one partner of each (``x_pair``), the candidate picked by a
        generator seeded with ``key`` (the step: a resumed run draws the partners an unbroken one would)."""
        out = {"x": self._videos(idx), "index": idx.to(self.device)}
        if self.partners is not None:
            pick = torch.randint(self.partners.shape[1], (len(idx),), generator=torch.Generator().manual_seed(key))
            out["x_pair"] = self._videos(self.partners[idx.cpu(), pick])
        if self.uses_labels:
            dev_idx = idx.to(self.device)
            out.update({k: v[dev_idx] for k, v in self.labels.items()})
        return out


class _MetricLog:
    """Averages loss terms over a logging window without a device sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per term: multi-phase models add each phase's terms separately

    def add(self, terms: Mapping[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self, world: int = 1) -> dict[str, float]:
        """Window means; averaged over ranks when data-parallel (so they describe the global batch)."""
        keys = sorted(self.sums)
        if world > 1 and keys:
            stacked = torch.stack([self.sums[k] for k in keys])
            dist.all_reduce(stacked)
            self.sums = dict(zip(keys, stacked / world))
        out = {k: float(v) / max(self.counts.get(k, 0), 1) for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


# ----------------------------------------------------------------------------------
# the training loop
# ----------------------------------------------------------------------------------
def train(config: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Train a model; see :class:`TrainConfig`. Returns the run folder, final step and metrics."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None = "not given"
    explicit = set(kwargs)
    cfg = dataclasses.replace(config or TrainConfig(), **kwargs)
    if not cfg.out:
        raise DsvaeError("an output run folder is needed (--out RUN_DIR)")
    run_dir = Path(cfg.out)
    apply_cpu_allocator_settings()
    info, device = _init_distributed(cfg.device)
    try:
        return _train(cfg, run_dir, info, device, explicit)
    finally:
        if info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, run_dir: Path, info: DistInfo, device: torch.device, explicit: set[str]) -> TrainResult:
    resuming = _check_run_dir(run_dir, cfg)
    if info.world > 1:
        dist.barrier()  # every rank has looked at the folder before rank 0 changes it
    state = ckpt_io.load_checkpoint(run_dir, map_location="cpu") if resuming else None
    if state is not None:
        cfg = _merge_resumed(cfg, state["train_config"], explicit)
    if not cfg.data:
        raise DsvaeError("a data set is needed (--data FILE.h5)")
    cfg, model_cfg = _resolve_config(cfg)
    if cfg.polish_minutes and info.world > 1:
        raise DsvaeError("--polish-minutes runs in one process; train without it and polish the finished run "
                         "with `dsvae polish --run RUN --data DATA`")
    if state is not None:
        model_cfg = state["model_config"]

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_cfg)
    if cfg.batch_size % info.world:
        raise DsvaeError(f"batch size {cfg.batch_size} is not divisible by the {info.world} processes")
    local_batch = cfg.batch_size // info.world

    ds = SpritesDataset(cfg.data, "train", resident=cfg.resident, image_size=model.config.image_size,
                        limit=cfg.limit, progress=cfg.progress and info.main)
    if len(ds) < cfg.batch_size:
        raise DsvaeError(f"the training split has {len(ds)} sequences, fewer than the batch size {cfg.batch_size}")
    steps_per_epoch = len(ds) // cfg.batch_size
    total_steps = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps is not None and cfg.epochs is not None:
        total_steps = min(cfg.max_steps, max(1, math.ceil(cfg.epochs * steps_per_epoch)))

    _create_run_dir(run_dir, cfg, info)
    model.to(device)
    wrapped: torch.nn.Module = speed_up(model, channels_last=cfg.channels_last)  # before Adam sees the weights
    optimizers = build_optimizers(model, cfg.lr, cfg.weight_decay)
    base_lr = {phase: [g["lr"] for g in opt.param_groups] for phase, opt in optimizers.items()}
    step, epoch = 0, 0
    lr_progress0 = 0.0  # share of the learning-rate schedule done before this call (resumed runs)
    metrics: dict[str, float] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        for phase, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][phase])
        step, epoch = int(state["step"]), int(state.get("epoch", 0))
        metrics = dict(state.get("metrics", {}))
        lr_progress0 = float(state.get("lr_progress", 0.0))
        ckpt_io.set_rng_state(state["rng"])
        _truncate_metrics(run_dir / "metrics.jsonl", step, info.main)
    # the weight average goes on from the checkpoint's, or starts at the current weights (also when a
    # run resumed with --ema-decay had none)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and state is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    if state is not None and "static_prior" in state and step < total_steps:
        # further training moves the codes the mixture was fitted to: N(0, I) until it is refitted at the end
        reset_static_prior(model.state_dict())
        if ema is not None:
            reset_static_prior(ema.state)
    test_batch = _sample_batch(cfg, model) if info.main else None

    if info.world > 1:
        if device.type == "cuda":
            wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(model.phases) > 1,
        )
        model.noise_context = (cfg.batch_size, info.rank * local_batch)
    if cfg.compile:
        wrapped = speed_up(wrapped, compile=True)

    if info.main:
        _write_config(run_dir, cfg, model, info, device)
    data = _DeviceData(ds, device, model.uses_labels, _partners(model, ds, cfg.progress and info.main))
    autocast_dtype = amp_dtype(cfg.amp, device)
    tb = _tensorboard(run_dir, cfg) if info.main and cfg.tensorboard else None
    check_every = 1 if device.type == "cpu" else cfg.log_every
    log = _MetricLog()
    bad = torch.zeros((), dtype=torch.bool, device=device)
    last_good = step
    t_start = time.time()
    t_window, seqs_window = time.time(), 0
    budget = f" ({cfg.max_minutes:g} min budget)" if cfg.max_minutes is not None else ""
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.model}{budget}", unit="step",
               disable=not (cfg.progress and info.main), dynamic_ncols=True)
    # The schedule spans what is left of it over this call's budget: its steps, or its minutes when
    # they run out first (a resumed run goes on from the checkpoint's share of the schedule).
    start_step, lr_progress = step, lr_progress0
    lr_now = cfg.lr * _set_lr(optimizers, base_lr, cfg, lr_progress)
    model.train()
    batches = _batches(len(ds), cfg.batch_size, cfg.seed, step)
    try:
        while step < total_steps:
            epoch, idx = next(batches)
            batch = data.batch(idx[info.rank * local_batch:(info.rank + 1) * local_batch],
                               key=cfg.seed * 1_000_003 + step)
            phase_terms = optimisation_step(wrapped, model, optimizers, batch, device.type, autocast_dtype,
                                            cfg.grad_clip)
            if ema is not None:
                ema.update()
            for phase, terms in phase_terms.items():
                bad |= ~torch.isfinite(terms["loss"].detach())
                log.add({k if len(model.phases) == 1 else f"{phase}/{k}": v for k, v in terms.items()})
            step += 1
            seqs_window += cfg.batch_size
            bar.update(1)

            if step % check_every == 0 or step % cfg.checkpoint_every == 0 or step == total_steps:
                if bool(bad):
                    raise TrainingDiverged(
                        f"the loss became NaN or infinite by step {step}; stopped. The last good checkpoint "
                        f"(step {last_good}) is kept in {run_dir / 'checkpoints'}"
                    )
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.time() - t_window
                metrics = log.pop(info.world)
                metrics.update(step=step, epoch=epoch, lr=lr_now, seq_per_s=seqs_window / max(elapsed, 1e-9),
                               time=time.time() - t_start)
                t_window, seqs_window = time.time(), 0
                if info.main:
                    _append_jsonl(run_dir / "metrics.jsonl", metrics)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith("loss") or k in
                                     ("recon", "kl_f", "kl_z")})
                    if tb is not None:
                        for k, v in metrics.items():
                            tb.add_scalar(k, v, step)
            elapsed_s = time.time() - t_start
            if info.world > 1 and cfg.max_minutes is not None:  # every rank stops and schedules alike
                slowest = torch.tensor(elapsed_s, device=device, dtype=torch.float64)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                elapsed_s = float(slowest)
            timeout = cfg.max_minutes is not None and elapsed_s > 60 * cfg.max_minutes
            done = (step - start_step) / max(1, total_steps - start_step)
            if cfg.max_minutes is not None:  # the bar counts towards the steps the budget will allow
                done = max(done, elapsed_s / (60 * cfg.max_minutes))
                bar.total = steps_in_budget(step, start_step, elapsed_s, 60 * cfg.max_minutes, total_steps)
            lr_progress = min(1.0, lr_progress0 + (1.0 - lr_progress0) * done)
            lr_now = cfg.lr * _set_lr(optimizers, base_lr, cfg, lr_progress)
            final = step == total_steps or timeout
            if info.main and (step % cfg.checkpoint_every == 0 or final):
                _save(run_dir, cfg, model, optimizers, step, epoch, metrics, lr_progress, ema)
                last_good = step
            if info.main and cfg.sample_every and (step % cfg.sample_every == 0 or final):
                _write_samples(run_dir, model, test_batch, step, device)
            if timeout:
                break
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    # a finished, polished run resumed without new steps keeps its weights as they are
    finishing = not (state is not None and "polished" in state and step == start_step)
    recalibrated = cfg.bn_recalibrate if finishing and ema is not None and batchnorm_layers(model) else 0
    if recalibrated:
        _recalibrate(cfg, model, ema, data, len(ds), local_batch, info, device, autocast_dtype)
        if info.main:
            _save(run_dir, cfg, model, optimizers, step, epoch, metrics, lr_progress, ema,
                  bn_recalibrated=recalibrated)
    polished = static_prior = None
    if finishing and cfg.polish_minutes and info.main:  # one process polishes; the others wait at the barrier
        polished = _polish(cfg, model, ema, ds, autocast_dtype)
    if finishing and getattr(model.config, "static_prior_components", 0) and info.main:
        static_prior = _fit_static_prior(cfg, model, ema, ds, step, autocast_dtype)
    if polished or static_prior:
        # into last.pt only: the step's periodic checkpoint keeps the unpolished weights and the unfitted prior
        _save(run_dir, cfg, model, optimizers, step, epoch, metrics, lr_progress, ema,
              bn_recalibrated=recalibrated, polished=polished, static_prior=static_prior, periodic=False)
    if info.world > 1:
        dist.barrier()
    model.eval()
    return TrainResult(run_dir, info.rank, step, metrics, model, time.time() - t_start, recalibrated, polished,
                       static_prior)


def _partners(model: SequenceModel, ds: SpritesDataset, show: bool) -> torch.Tensor | None:
    """Each training sequence's partner candidates, when the model's loss reads partner frames: its nearest
    sequences by colour histogram (no labels; ``dsvae.data.mixing.dataset_colour_neighbours``), else None."""
    k = model.partner_neighbours()
    if not k:
        return None
    t0 = time.time()
    partners = dataset_colour_neighbours(ds, k)
    if show:
        tqdm.write(f"partners: the {partners.shape[1]} nearest of {len(ds)} sequences by colour, "
                   f"{time.time() - t0:.1f} s")
    return partners


def steps_in_budget(step: int, start_step: int, elapsed_s: float, budget_s: float, total_steps: int) -> int:
    """The step count a time-budgeted run is heading for at its pace so far (``start_step`` -> ``step`` in
    ``elapsed_s``): what its progress bar counts towards, so that the bar's estimate of the time left is the
    budget's, not that of the epochs no budget will reach. Never below ``step``, never above ``total_steps``."""
    if step <= start_step or elapsed_s <= 0:
        return total_steps
    pace = (step - start_step) / elapsed_s
    return max(step, min(total_steps, round(step + pace * max(0.0, budget_s - elapsed_s))))


def _recalibrate(cfg: TrainConfig, model: SequenceModel, ema: WeightAverage, data: _DeviceData, n: int,
                 local_batch: int, info: DistInfo, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """Recompute the batch-norm statistics of the weight average on ``cfg.bn_recalibrate`` random training batches
    (every rank alike: synchronised batch norm needs them all). The trained weights keep theirs: they were
    estimated under those very weights, and recomputing them measured no better (BENCHMARKS.md)."""
    def batches() -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 999_983)
        for _ in range(cfg.bn_recalibrate):
            idx = torch.randperm(n, generator=g)[:cfg.batch_size]
            yield data.batch(idx[info.rank * local_batch:(info.rank + 1) * local_batch],
                             key=int(torch.randint(2**62, (), generator=g)))

    show = cfg.progress and info.main
    # the augmentations draw random numbers: leave the run's generators where training left them
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        recalibrate_state(model, ema.state, batches(), autocast_dtype=autocast_dtype, progress=show,
                          total=cfg.bn_recalibrate)


def _polish(cfg: TrainConfig, model: SequenceModel, ema: WeightAverage | None, ds: SpritesDataset,
            autocast_dtype: torch.dtype | None) -> dict[str, Any]:
    """Polish the decoder of the weights the run is judged with (the weight average when kept, else the trained
    weights, in place) for ``cfg.polish_minutes``; returns the record the checkpoint keeps."""
    target = model
    if ema is not None:
        target = copy.deepcopy(model)
        target.load_state_dict(ema.state)
    result = polish_decoder(target, ds, minutes=cfg.polish_minutes, autocast_dtype=autocast_dtype, seed=cfg.seed,
                            progress=cfg.progress)
    if ema is not None:
        with torch.no_grad():
            for k, v in target.state_dict().items():
                ema.state[k].copy_(v)
    return result.record("ema" if ema is not None else "raw", cfg.data)


def _fit_static_prior(cfg: TrainConfig, model: SequenceModel, ema: WeightAverage | None, ds: SpritesDataset,
                      step: int, autocast_dtype: torch.dtype | None) -> dict[str, Any]:
    """Fit the static prior mixture of the trained weights and, when kept, of the weight average (each to its own
    encoder's codes of the training split; ``dsvae.training.static_prior``); returns the records by weight set."""
    records = {"raw": fit_static_prior(model, ds, seed=cfg.seed, autocast_dtype=autocast_dtype,
                                       progress=cfg.progress).record(cfg.data, step)}
    if ema is not None:
        target = copy.deepcopy(model)
        target.load_state_dict(ema.state)
        records["ema"] = fit_static_prior(target, ds, seed=cfg.seed, autocast_dtype=autocast_dtype,
                                          progress=cfg.progress).record(cfg.data, step)
        with torch.no_grad():
            for k, v in target.state_dict().items():
                if k in STATIC_PRIOR_BUFFERS:
                    ema.state[k].copy_(v)
    return records


# ----------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------
def _write_config(run_dir: Path, cfg: TrainConfig, model: SequenceModel, info: DistInfo, device: torch.device) -> None:
    from dsvae.io import atomic_write_text

    payload = {
        "dsvae_version": __version__,
        "torch_version": torch.__version__,
        "model_type": model.model_type,
        "model_config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "world_size": info.world,
        "device": str(device),
        "train": cfg.to_dict(),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(payload, indent=2) + "\n")


def _save(run_dir: Path, cfg: TrainConfig, model: SequenceModel, optimizers: Mapping[str, torch.optim.Optimizer],
          step: int, epoch: int, metrics: Mapping[str, float], lr_progress: float,
          ema: WeightAverage | None = None, bn_recalibrated: int = 0,
          polished: Mapping[str, Any] | None = None, static_prior: Mapping[str, Any] | None = None,
          periodic: bool = True) -> None:
    payload = {
        "dsvae_version": __version__,
        "model_type": model.model_type,
        "model_config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
        "step": step,
        "epoch": epoch,
        "train_config": cfg.to_dict(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "lr_progress": float(lr_progress),
        "rng": ckpt_io.rng_state(),
    }
    if ema is not None:
        payload["ema"] = ema.state_dict()
    if bn_recalibrated:  # the weight average's batch-norm statistics were recomputed at this step
        payload["bn_recalibrated"] = {"batches": int(bn_recalibrated), "step": step}
    if polished:  # the decoder of the judged weights was refit to the posterior means at this step
        payload["polished"] = dict(polished)
    if static_prior:  # the static prior mixture was fitted to the training codes at this step
        payload["static_prior"] = dict(static_prior)
    folder = run_dir / "checkpoints"
    ckpt_io.save_checkpoint(folder / ckpt_io.LAST, payload)
    if cfg.keep_checkpoints and periodic:
        ckpt_io.save_checkpoint(folder / f"step_{step:07d}.pt", payload)
        periodic = sorted(folder.glob("step_*.pt"))
        for old in periodic[:-cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int, is_main: bool) -> None:
    """Drop metric lines logged after the checkpoint a resumed run restarts from."""
    if not is_main or not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    from dsvae.io import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _sample_batch(cfg: TrainConfig, model: SequenceModel, n: int = 4) -> torch.Tensor | None:
    """A few fixed sequences (test split when there is one) for the progress GIFs."""
    if not cfg.sample_every:
        return None
    size = model.config.image_size
    for split in ("test", "train"):
        try:
            ds = SpritesDataset(cfg.data, split, resident=False, image_size=size)
        except DsvaeError:
            continue
        if len(ds) >= 2:
            picks = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long()
            return ds.batch(picks)["x"]
    return None


@torch.no_grad()
def _write_samples(run_dir: Path, model: SequenceModel, x: torch.Tensor | None, step: int, device: torch.device) -> None:
    """A GIF of real sequences, their reconstructions and static-code swaps (row k: static of k+1, motion of k)."""
    if x is None:
        return
    from dsvae.viz.gif import write_gif_grid

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = x.to(device)
        post = model.encode(x)
        recon = model.decode(post.f_mean, post.z_mean)
        swap = model.decode(post.f_mean.roll(-1, 0), post.z_mean)
    model.train(was_training)
    rows = [list(x.cpu()), list(recon.float().cpu()), list(swap.float().cpu())]
    write_gif_grid(rows, run_dir / "samples" / f"step_{step:07d}.gif",
                   labels=["real", "reconstruction", "static of next"], overwrite=True)


def _tensorboard(run_dir: Path, cfg: TrainConfig):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise DsvaeError("TensorBoard logging needs the tensorboard package: pip install 'dsvae[tb]'") from exc
    return SummaryWriter(str(run_dir / "tb"))


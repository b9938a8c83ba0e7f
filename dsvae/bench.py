"""Training-step benchmark: throughput of one model with each speed option switched on alone and all together.

A *variant* is a set of speed options ("levers") applied to the same network:

- ``allocator``: glibc keeps freed heap pages mapped (:func:`~dsvae.training.runtime.apply_cpu_allocator_settings`;
  CPU only: it is a process setting);
- ``channels_last``: NHWC convolution weights (:func:`~dsvae.training.runtime.speed_up`);
- ``bf16``: bf16 autocast of the forward pass (fast on CPUs with AVX512_BF16/AMX and on GPUs);
- ``compile``: ``torch.compile`` of the loss (the warm-up steps compile).

``reference`` has none of them: the unoptimised float32 step with glibc's default allocator. A
step is exactly the trainer's (:func:`~dsvae.training.trainer.optimisation_step`: forward, loss,
backward, gradient clipping, Adam) on a fixed random batch of uint8 videos converted to float
every step, as the trainer does. Every variant starts from the same weights and draws the same
noise at step i (the global seed is reset before each step), so their losses are comparable:
``loss_dev`` is the largest relative deviation from the reference's loss over all steps.

On CPU each allocator setting gets its own worker process (spawned fresh, so the reference sees
glibc's defaults) and the variants run **interleaved**, one step each in turn, so that load from
other processes on a shared machine affects all of them alike. Throughput is the median step
time of ``steps`` timed steps after ``warmup`` untimed ones. ``peak_mb`` is the memory one step
needs: weights, gradients, Adam state and the resident batch plus the peak of what the step
allocates on top (measured with the PyTorch profiler on CPU, ``max_memory_allocated`` on GPU).
GFLOP/s count the network's float32 operations per step (``FlopCounterMode``: convolutions and
matrix products, forward and backward), whatever precision a variant runs them in.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from dsvae import __version__
from dsvae.data.dataset import to_float
from dsvae.data.schema import FACTORS, HEAD_CLASSES
from dsvae.errors import DsvaeError
from dsvae.io import atomic_write_text, check_output_path

FORMAT = "dsvae-bench"
FORMAT_VERSION = 1
LEVERS = ("allocator", "channels_last", "bf16", "compile")
#: The allocator is a CPU process setting; it does not exist on a GPU.
GPU_LEVERS = ("channels_last", "bf16", "compile")
DEFAULT_VARIANTS = ("reference", "+allocator", "+channels_last", "+bf16", "+compile", "all")


@dataclass(frozen=True)
class Variant:
    """A named set of speed options."""

    label: str
    allocator: bool = False
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @property
    def levers(self) -> tuple[str, ...]:
        return tuple(name for name in LEVERS if getattr(self, name))

    def options(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in LEVERS}


def parse_variant(spec: str, device_type: str = "cpu") -> Variant:
    """A variant from its name.

    ``reference`` (no option), ``all`` (every option of the device), ``all-compile`` (all but the
    named ones), or options joined by ``+``: ``+bf16``, ``allocator+channels_last``, ...
    """
    levers = LEVERS if device_type == "cpu" else GPU_LEVERS
    text = spec.strip()
    if text == "reference":
        return Variant("reference")
    if text == "all" or text.startswith("all-"):
        dropped = text.split("-")[1:]
        for name in dropped:
            _check_lever(name, spec, levers)
        return Variant(text, **{name: name not in dropped for name in levers})
    names = [t for t in text.split("+") if t]
    if not names:
        raise DsvaeError(f"empty benchmark variant {spec!r}")
    for name in names:
        _check_lever(name, spec, levers)
    if len(set(names)) != len(names):
        raise DsvaeError(f"benchmark variant {spec!r} names an option twice")
    ordered = [name for name in LEVERS if name in names]
    return Variant("+" + "+".join(ordered), **{name: True for name in names})


def _check_lever(name: str, spec: str, levers: Sequence[str]) -> None:
    if name in LEVERS and name not in levers:
        raise DsvaeError(f"benchmark variant {spec!r}: the {name} option is a CPU setting (no meaning on a GPU)")
    if name not in levers:
        raise DsvaeError(f"unknown option {name!r} in benchmark variant {spec!r} (options: {', '.join(levers)}; "
                         "or reference, all, all-OPTION)")


def parse_variants(specs: Sequence[str] | str | None, device_type: str = "cpu") -> list[Variant]:
    """Variants from names (a list or one comma-separated string); None gives the default list for the device."""
    if specs is None:
        specs = [s for s in DEFAULT_VARIANTS if not (device_type != "cpu" and s == "+allocator")]
    elif isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    variants = [parse_variant(s, device_type) for s in specs]
    if not variants:
        raise DsvaeError("no benchmark variants given")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise DsvaeError(f"benchmark variants repeat: {', '.join(labels)}")
    return variants


# ----------------------------------------------------------------------------------
# one process's side: build variants, time their steps
# ----------------------------------------------------------------------------------
@dataclass
class _Run:
    model: Any
    wrapped: Any
    optimizers: dict
    videos: torch.Tensor
    labels: dict[str, torch.Tensor]
    autocast_dtype: torch.dtype | None


class _StepBench:
    """Builds variants of one model and runs their training steps (in a worker process on CPU)."""

    def __init__(self, model: str, model_config: Mapping[str, Any], device: str, threads: int | None,
                 seed: int, lr: float, grad_clip: float, frames: int, allocator: bool) -> None:
        from dsvae.training.runtime import apply_cpu_allocator_settings

        if allocator and not apply_cpu_allocator_settings():
            raise DsvaeError("the allocator option could not be applied (glibc mallopt unavailable, or "
                             "DSVAE_MALLOC=default is set)")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model_name, self.model_config = model, dict(model_config)
        self.device = torch.device(device)
        self.seed, self.lr, self.grad_clip, self.frames = seed, lr, grad_clip, frames
        self.runs: dict[str, _Run] = {}

    def _build(self, overrides: Mapping[str, Any] | None = None) -> Any:
        from dsvae.models import build_model

        torch.manual_seed(self.seed)
        config = {**self.model_config, **dict(overrides or {})}
        return build_model(self.model_name, config).to(self.device).train()

    def _inputs(self, model: Any, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A fixed random batch: uint8 videos (B, T, 3, S, S) and labels, the same for every variant."""
        g = torch.Generator().manual_seed(self.seed + 1)
        size = model.config.image_size
        videos = torch.randint(0, 256, (batch_size, self.frames, 3, size, size), generator=g, dtype=torch.uint8)
        labels = {
            "index": torch.arange(batch_size),
            "action": torch.randint(0, HEAD_CLASSES["action"], (batch_size,), generator=g),
            "attributes": torch.stack([torch.randint(0, HEAD_CLASSES[f], (batch_size,), generator=g)
                                       for f in FACTORS], dim=1),
        }
        return videos.to(self.device), {k: v.to(self.device) for k, v in labels.items()}

    def setup(self, label: str, options: Mapping[str, bool], batch_size: int,
              overrides: Mapping[str, Any] | None = None) -> int:
        """Build variant ``label`` (the model config with ``overrides``); returns the model's parameter count."""
        from dsvae.training.runtime import speed_up
        from dsvae.training.trainer import build_optimizers

        model = self._build(overrides)
        wrapped = speed_up(model, channels_last=options["channels_last"], compile=options["compile"])
        optimizers = build_optimizers(model, self.lr)
        videos, labels = self._inputs(model, batch_size)
        self.runs[label] = _Run(model, wrapped, optimizers, videos, labels,
                                torch.bfloat16 if options["bf16"] else None)
        return model.num_parameters()

    def _step(self, run: _Run, index: int) -> float:
        from dsvae.training.trainer import optimisation_step

        torch.manual_seed(self.seed * 1_000_003 + index)
        batch = {"x": to_float(run.videos), **run.labels}
        terms = optimisation_step(run.wrapped, run.model, run.optimizers, batch, self.device.type,
                                  run.autocast_dtype, self.grad_clip)
        return float(sum(t["loss"].detach().float() for t in terms.values()))

    def step(self, label: str, index: int) -> tuple[float, float, float]:
        """(wall seconds, CPU seconds of this process, loss) of training step ``index`` of variant ``label``."""
        run = self.runs[label]
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = self._step(run, index)  # float() waits for the result
        self._sync()
        return time.perf_counter() - t0, time.process_time() - c0, loss

    def peak_memory(self, label: str, index: int) -> int:
        """Bytes one more step of ``label`` needs at its peak (see the module docstring)."""
        run = self.runs[label]
        for opt in run.optimizers.values():
            opt.zero_grad(set_to_none=True)  # the step frees and re-creates them anyway
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._step(run, index)
            return int(torch.cuda.max_memory_allocated(self.device))
        base = _live_bytes(run)
        with _quiet_fds():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                        profile_memory=True) as prof:
                self._step(run, index)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        current = peak = 0
        for _, nbytes in events:
            current += nbytes
            peak = max(peak, current)
        return base + peak

    def flops_per_sequence(self, batch_size: int = 2, overrides: Mapping[str, Any] | None = None) -> float:
        """Float32 operations of one training step (forward and backward) per sequence."""
        from torch.utils.flop_counter import FlopCounterMode

        from dsvae.training.trainer import build_optimizers

        model = self._build(overrides)
        videos, labels = self._inputs(model, batch_size)
        batch = {"x": to_float(videos), **labels}
        counter = FlopCounterMode(display=False)
        optimizers = build_optimizers(model, self.lr)
        with counter:
            for phase in model.phases:
                model.loss(batch, phase)["loss"].backward()
                optimizers[phase].zero_grad(set_to_none=True)
        return counter.get_total_flops() / batch_size

    def release(self, label: str) -> None:
        del self.runs[label]

    def process_peak_rss(self) -> int | None:
        """This process's peak resident memory (VmHWM) in bytes, where /proc tells it."""
        status = Path("/proc/self/status")
        if not status.is_file():
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _live_bytes(run: _Run) -> int:
    """Bytes of the tensors a step starts from: weights, gradients, optimizer state, the resident batch."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None:
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for p in run.model.parameters():
        add(p)
        add(p.grad)
    for buf in run.model.buffers():
        add(buf)
    for opt in run.optimizers.values():
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    add(value)
    add(run.videos)
    for value in run.labels.values():
        add(value)
    return total


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence the profiler's C++ log lines (file descriptors 1 and 2) while it runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def _serve(conn: Any, kwargs: dict[str, Any]) -> None:
    """Worker loop: build a :class:`_StepBench`, then answer (method, args) messages until None."""
    try:
        bench = _StepBench(**kwargs)
    except Exception as exc:  # reported to the parent, which raises it there
        conn.send(("error", _describe(exc)))
        return
    conn.send(("ok", None))
    while True:
        message = conn.recv()
        if message is None:
            break
        method, args = message
        try:
            result = getattr(bench, method)(*args)
        except Exception as exc:  # reported to the parent, which raises it there
            conn.send(("error", _describe(exc)))
        else:
            conn.send(("ok", result))


def _describe(exc: Exception) -> tuple[bool, str, str]:
    return isinstance(exc, DsvaeError), f"{type(exc).__name__}: {exc}", traceback.format_exc()


class _Remote:
    """A :class:`_StepBench` in a freshly spawned process (its own allocator settings)."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, kwargs), daemon=True, name="dsvae-bench-worker")
        self.proc.start()
        child.close()
        self._answer()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        return self._answer()

    def _answer(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(f"a benchmark worker process died (exit code {self.proc.exitcode}); "
                               "out of memory?") from None
        if status == "ok":
            return payload
        is_user_error, message, trace = payload
        if is_user_error:
            raise DsvaeError(message.split(": ", 1)[1])
        raise RuntimeError(f"benchmark worker failed: {message}\n{trace}")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(None)
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)
        self.conn.close()


class _Local:
    """A :class:`_StepBench` in this process (GPU runs: the allocator option does not apply)."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.bench = _StepBench(**kwargs)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.bench, method)(*args)

    def close(self) -> None:
        self.bench.runs.clear()


# ----------------------------------------------------------------------------------
# hardware and the benchmark itself
# ----------------------------------------------------------------------------------
def hardware_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU model, cores, threads, bf16 support, load, GPU name: what the numbers depend on."""
    from dsvae.training.runtime import cpu_has_native_bf16

    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_native": cpu_has_native_bf16(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def benchmark(
    model: str = "dsvae",
    preset: str = "paper",
    model_config: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (32,),
    variants: Sequence[str] | str | None = None,
    steps: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    threads: int | None = None,
    frames: int = 8,
    seed: int = 0,
    lr: float | None = None,
    grad_clip: float = 5.0,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
    overwrite: bool = False,
    command: str | None = None,
    compare: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Time training steps of ``model`` (``preset`` plus ``model_config`` overrides) per variant and batch size.

    ``variants``: names for :func:`parse_variants` (default: reference, each option alone, all).
    ``compare``: further model configs (overrides on top of that one, e.g. ``{"motion_flip": 0.0}``), each
    timed with every variant, interleaved with the rest; their rows (variant ``"all [motion_flip=0.0]"``)
    carry ``vs_base``, the speed-up over the same variant of the base config.
    ``threads``: intra-op threads (default: this process's ``torch.get_num_threads()``).
    ``out`` / ``markdown``: a JSON report / markdown table written atomically. Returns the report:
    ``rows`` (one per batch size and variant: ``seq_per_s``, ``frames_per_s``, ``gflop_per_s``,
    ``peak_mb``, ``speedup`` over the reference of the same batch size when there is one,
    ``loss_first``, ``loss_dev``, step times), ``hardware``, ``torch_version``, ``command``.
    """
    from dsvae.models import model_class
    from dsvae.models.presets import get_preset
    from dsvae.training.trainer import resolve_device

    model_class(model)  # a clear error for an unknown model
    preset_model, preset_train = get_preset(model, preset)
    config = {**preset_model, **dict(model_config or {})}
    dev = resolve_device(device)
    chosen = parse_variants(variants, dev.type)
    if not isinstance(steps, int) or steps < 1:
        raise DsvaeError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise DsvaeError(f"warm-up steps must be >= 0, got {warmup!r}")
    if warmup < 1 and any(v.compile for v in chosen):
        raise DsvaeError("compiled variants need at least one warm-up step (the first step compiles)")
    sizes = list(batch_sizes)
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise DsvaeError(f"batch sizes must be positive integers, got {sizes!r}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise DsvaeError(f"threads must be >= 1, got {threads}")
    out_path = check_output_path(out, overwrite, "benchmark results") if out is not None else None
    md_path = check_output_path(markdown, overwrite, "benchmark table") if markdown is not None else None
    lr = float(preset_train.get("lr", 1e-3) if lr is None else lr)
    configs = _compared_configs(model, config, compare)

    base = {"model": model, "model_config": config, "device": str(dev), "threads": threads, "seed": seed,
            "lr": lr, "grad_clip": grad_clip, "frames": frames}
    hardware = hardware_info(dev, threads)
    t_start = time.time()
    workers: dict[bool, Any] = {}
    rows: list[dict[str, Any]] = []
    base_variants = chosen
    bar = tqdm(total=len(sizes) * len(chosen) * len(configs) * (warmup + steps), desc=f"bench {model}/{preset}",
               unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for allocator in sorted({v.allocator for v in chosen}):
            kwargs = {**base, "allocator": allocator}
            workers[allocator] = _Remote(kwargs) if dev.type == "cpu" else _Local(kwargs)
        flops = {suffix: workers[chosen[0].allocator].call("flops_per_sequence", 2, over)
                 for suffix, over in configs.items()}
        chosen = [Variant(v.label + suffix, **v.options()) for suffix in configs for v in base_variants]
        overrides = {v.label + suffix: over for suffix, over in configs.items() for v in base_variants}
        bases = {v.label + suffix: v.label for suffix in configs for v in base_variants}
        flops_of = {v.label + suffix: flops[suffix] for suffix in configs for v in base_variants}
        parameters = 0
        for batch in sizes:
            for v in chosen:
                count = workers[v.allocator].call("setup", v.label, v.options(), batch, overrides[v.label])
                if not overrides[v.label]:  # the report's count is the base config's
                    parameters = count
            times: dict[str, list[float]] = {v.label: [] for v in chosen}
            cpu: dict[str, list[float]] = {v.label: [] for v in chosen}
            losses: dict[str, list[float]] = {v.label: [] for v in chosen}
            first: dict[str, float] = {}
            for index in range(warmup + steps):
                for v in chosen:
                    seconds, cpu_seconds, loss = workers[v.allocator].call("step", v.label, index)
                    losses[v.label].append(loss)
                    if index == 0:
                        first[v.label] = seconds
                    if index >= warmup:
                        times[v.label].append(seconds)
                        cpu[v.label].append(cpu_seconds)
                    bar.update(1)
            peaks = {v.label: workers[v.allocator].call("peak_memory", v.label, warmup + steps) for v in chosen}
            for v in chosen:
                workers[v.allocator].call("release", v.label)
            rows += _rows(model, preset, dev, batch, frames, chosen, times, cpu, losses, first, peaks, flops_of,
                          overrides, bases)
        rss = {("tuned" if k else "default") + "_allocator": w.call("process_peak_rss") for k, w in workers.items()}
    finally:
        bar.close()
        for w in workers.values():
            w.close()

    report: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsvae_version": __version__,
        "torch_version": torch.__version__,
        "command": command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "model": model,
        "preset": preset,
        "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "parameters": parameters,
        "gflop_per_sequence": flops[""] / 1e9,
        "frames": frames,
        "steps": steps,
        "warmup": warmup,
        "variants": {v.label: v.options() for v in chosen},
        "compare": {suffix.strip(): {"model_config": over, "gflop_per_sequence": flops[suffix] / 1e9}
                    for suffix, over in configs.items() if over},
        "process_peak_rss_mb": {k: (None if b is None else b / 2**20) for k, b in rss.items()},
        "seconds": time.time() - t_start,
        "rows": rows,
    }
    report["markdown"] = format_markdown(report)
    if out_path is not None:
        atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    if md_path is not None:
        atomic_write_text(md_path, report["markdown"])
    return report


def _compared_configs(model: str, config: Mapping[str, Any],
                      compare: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Label suffix -> config overrides: ``""`` for the base config, then one per compared config,
    each checked by building its config (a clear error before any worker starts)."""
    from dsvae.models import model_class

    configs: dict[str, dict[str, Any]] = {"": {}}
    for over in compare:
        if not isinstance(over, Mapping) or not over:
            raise DsvaeError(f"a compared config must be a non-empty mapping of config values, got {over!r}")
        model_class(model).config_class.from_dict({**config, **over})
        suffix = " [" + ",".join(f"{k}={json.dumps(v)}" for k, v in over.items()) + "]"
        if suffix in configs:
            raise DsvaeError(f"compared config{suffix} given twice")
        configs[suffix] = dict(over)
    return configs


def _rows(model: str, preset: str, dev: torch.device, batch: int, frames: int, chosen: Sequence[Variant],
          times: Mapping[str, list[float]], cpu: Mapping[str, list[float]], losses: Mapping[str, list[float]],
          first: Mapping[str, float], peaks: Mapping[str, int], flops: Mapping[str, float],
          overrides: Mapping[str, Mapping[str, Any]], bases: Mapping[str, str]) -> list[dict[str, Any]]:
    ref = next((v.label for v in chosen if v.label == "reference"), None)
    out = []
    for v in chosen:
        median = statistics.median(times[v.label])
        seq_per_s = batch / median
        row: dict[str, Any] = {
            "model": model,
            "preset": preset,
            "device": dev.type,
            "batch": batch,
            "variant": v.label,
            "seq_per_s": seq_per_s,
            "frames_per_s": seq_per_s * frames,
            "gflop_per_s": seq_per_s * flops[v.label] / 1e9,
            "peak_mb": peaks[v.label] / 2**20,
            "step_ms_median": 1000 * median,
            "step_ms_min": 1000 * min(times[v.label]),
            "step_ms": [1000 * t for t in times[v.label]],
            "cpu_s_median": statistics.median(cpu[v.label]),
            "first_step_s": first[v.label],
            "loss_first": losses[v.label][0],
            "loss_last": losses[v.label][-1],
            "losses": losses[v.label],
        }
        if overrides[v.label]:
            row["model_config"] = dict(overrides[v.label])
            row["vs_base"] = statistics.median(times[bases[v.label]]) / median
        if ref is not None:
            ref_median = statistics.median(times[ref])
            row["speedup"] = ref_median / median
            row["loss_dev"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[v.label], losses[ref]))
        out.append(row)
    return out


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table with a header of what it was measured on."""
    hw = report["hardware"]
    load = hw.get("load_average")
    lines = [
        f"# dsvae bench: {report['model']} preset {report['preset']}",
        "",
        f"- command: `{report['command']}`",
        f"- hardware: {hw['cpu_model']}, {hw['cpus_usable']} usable CPU cores of {hw['cpu_count']}, "
        f"{hw['threads']} thread{'s' if hw['threads'] != 1 else ''}, CPU capability {hw['cpu_capability']}, native bf16: "
        f"{'yes' if hw['cpu_bf16_native'] else 'no'}" + (f", GPU {hw['gpu']}" if "gpu" in hw else ""),
        f"- software: torch {report['torch_version']}, dsvae {report['dsvae_version']}, Python {hw['python']}",
        f"- load average (1/5/15 min) at start: {_load(load)}, at end: {_load(report.get('load_average_end'))}",
        f"- network: {report['parameters'] / 1e6:.2f} M parameters, {report['gflop_per_sequence']:.2f} GFLOP per "
        f"sequence per training step ({report['frames']} frames), random uint8 input",
        f"- timing: median of {report['steps']} steps after {report['warmup']} warm-up steps; variants run "
        "interleaved, one step each in turn; same weights and noise per step, `loss dev` = largest relative "
        "deviation from the reference's loss; `CPU s/step`: CPU time of the step, all threads (on a shared "
        "machine less sensitive to other processes than seq/s)",
    ]
    compared = report.get("compare") or {}
    if compared:
        flops = "; ".join(f"`{k}` {v['gflop_per_sequence']:.2f} GFLOP per sequence" for k, v in compared.items())
        lines.append("- compared configs (`[...]` after a variant: overrides of the config above; `vs base config`: "
                     "speed-up over the same variant without them; GFLOP/s counts each config's own operations): "
                     f"{flops}")
    extra = " vs base config |" if compared else ""
    lines += [
        "",
        "| model | preset | device | batch | variant | seq/s | frames/s | GFLOP/s | peak MB | vs reference | loss dev "
        "| CPU s/step |" + extra,
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if compared else ""),
    ]
    for r in report["rows"]:
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a"
        dev = f"{r['loss_dev']:.1e}" if "loss_dev" in r else "n/a"
        base = (f" {r['vs_base']:.2f}x |" if "vs_base" in r else " - |") if compared else ""
        lines.append(f"| {r['model']} | {r['preset']} | {r['device']} | {r['batch']} | {r['variant']} | "
                     f"{r['seq_per_s']:.2f} | {r['frames_per_s']:.1f} | {r['gflop_per_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | {speed} | {dev} | {r['cpu_s_median']:.2f} |" + base)
    return "\n".join(lines) + "\n"


def _load(load: Sequence[float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{x:.2f}" for x in load)


# ----------------------------------------------------------------------------------
# evaluation speed
# ----------------------------------------------------------------------------------
def benchmark_eval(
    data: str | os.PathLike,
    model: str = "dsvae",
    preset: str = "paper",
    model_config: Mapping[str, Any] | None = None,
    judge_preset: str = "field",
    limit: int | None = 128,
    repeats: int = 5,
    amps: Sequence[str] = ("off", "bf16"),
    batch_size: int = 128,
    threads: int | None = None,
    split: str = "test",
    seed: int = 0,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Time ``dsvae eval`` (:func:`~dsvae.evaluation.protocol.evaluate`) per autocast setting.

    An untrained model of ``preset`` (channels_last, as ``dsvae eval`` loads a run) and an untrained
    judge of ``judge_preset``: evaluation time does not depend on the weights. ``limit`` videos of
    ``split`` (None: all of them) with ``repeats`` repeats; ``full_split_s`` extrapolates the measured
    encode and test times linearly to every video of the split. Returns the report (``rows``).
    """
    from dsvae.data.dataset import SpritesDataset
    from dsvae.evaluation.judge import Judge, judge_config
    from dsvae.evaluation.protocol import evaluate
    from dsvae.models import build_model
    from dsvae.models.presets import get_preset

    if not amps or any(a not in ("off", "bf16") for a in amps):
        raise DsvaeError(f"eval precisions must be off or bf16, got {list(amps)!r}")
    out_path = check_output_path(out, overwrite, "benchmark results") if out is not None else None
    md_path = check_output_path(markdown, overwrite, "benchmark table") if markdown is not None else None
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise DsvaeError(f"threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    probe = SpritesDataset(data, split, resident=False)
    n_split = len(probe)
    probe.close()
    preset_model, _ = get_preset(model, preset)
    torch.manual_seed(seed)
    net = build_model(model, {**preset_model, **dict(model_config or {})}).eval()
    net.to(memory_format=torch.channels_last)
    judge = Judge(judge_config(judge_preset, image_size=net.config.image_size)).eval()
    hardware = hardware_info(torch.device("cpu"), threads)
    rows = []
    torch.set_num_threads(threads)
    try:
        for amp in tqdm(list(amps), desc="bench eval", unit="run", disable=not progress):
            t0 = time.perf_counter()
            result = evaluate(net, judge, data, repeats=repeats, limit=limit, amp=amp, batch_size=batch_size,
                              device="cpu", seed=seed, progress=False, split=split)
            seconds = time.perf_counter() - t0
            timing = result["timing"]
            work = sum(timing.get(k, 0.0) for k in ("encode", "dynamic", "static", "swap"))
            rows.append({
                "model": model, "preset": preset, "judge": judge_preset, "device": "cpu", "amp": amp,
                "videos": result["n_videos"], "videos_in_split": n_split, "repeats": repeats,
                "batch_size": batch_size, "seconds": seconds, "timing": timing,
                "full_split_s": seconds - work + work * n_split / result["n_videos"],
                "videos_per_s": result["n_videos"] / seconds,
            })
    finally:
        torch.set_num_threads(previous_threads)
    report: dict[str, Any] = {
        "format": FORMAT + "-eval",
        "format_version": FORMAT_VERSION,
        "dsvae_version": __version__,
        "torch_version": torch.__version__,
        "command": command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "data": str(data),
        "split": split,
        "rows": rows,
    }
    report["markdown"] = format_eval_markdown(report)
    if out_path is not None:
        atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    if md_path is not None:
        atomic_write_text(md_path, report["markdown"])
    return report


def format_eval_markdown(report: Mapping[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"# dsvae bench --eval: {report['data']} split {report['split']}",
        "",
        f"- command: `{report['command']}`",
        f"- hardware: {hw['cpu_model']}, {hw['cpus_usable']} usable CPU cores of {hw['cpu_count']}, "
        f"{hw['threads']} thread{'s' if hw['threads'] != 1 else ''}, native bf16: "
        f"{'yes' if hw['cpu_bf16_native'] else 'no'}; torch {report['torch_version']}",
        f"- load average (1/5/15 min) at start: {_load(hw.get('load_average'))}, at end: "
        f"{_load(report.get('load_average_end'))}",
        "- untrained model and judge (the time does not depend on the weights); `full split` extrapolates "
        "the measured encode and test times linearly to every video of the split",
        "",
        "| model | preset | judge | amp | videos | repeats | seconds | videos/s | full split (s) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['preset']} | {r['judge']} | {r['amp']} | {r['videos']} | {r['repeats']} | "
                     f"{r['seconds']:.1f} | {r['videos_per_s']:.2f} | {r['full_split_s']:.0f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------
# equivalence of the fast and the plain path
# ----------------------------------------------------------------------------------
def check_variant(
    variant: str,
    model: str = "dsvae",
    preset: str = "tiny",
    model_config: Mapping[str, Any] | None = None,
    batch_size: int = 2,
    frames: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Loss and gradients of one training forward/backward of ``variant`` against the float32 reference.

    Both start from the same weights, batch and noise. The allocator option is a process setting
    that cannot change values and is not applied here. Returns ``loss_reference``,
    ``loss_variant``, ``loss_rel_diff``, ``grad_rel_diff`` (the relative L2 distance of all
    gradients together), ``grad_cosine_min`` (the smallest per-parameter cosine similarity,
    over parameters with a non-zero reference gradient) and ``param_names_equal``.
    """
    from dsvae.models.presets import get_preset
    from dsvae.training.runtime import speed_up
    from dsvae.training.trainer import resolve_device

    dev = resolve_device(device)
    v = parse_variant(variant, dev.type)
    preset_model, _ = get_preset(model, preset)
    kwargs = {"model": model, "model_config": {**preset_model, **dict(model_config or {})}, "device": str(dev),
              "threads": None, "seed": seed, "lr": 1e-3, "grad_clip": 0.0, "frames": frames, "allocator": False}
    bench = _StepBench(**kwargs)
    results = []
    for options in ({name: False for name in LEVERS}, v.options()):
        net = bench._build()
        wrapped = speed_up(net, channels_last=options["channels_last"], compile=options["compile"])
        videos, labels = bench._inputs(net, batch_size)
        torch.manual_seed(seed + 2)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=options["bf16"]):
            loss = wrapped({"x": to_float(videos), **labels}, phase=net.phases[0])["loss"]
        loss.backward()
        grads = {name: (p.grad.float().contiguous() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
                 for name, p in net.named_parameters()}
        results.append((float(loss.detach().float()), grads))
    (loss_ref, g_ref), (loss_var, g_var) = results
    flat_ref = torch.cat([g.flatten() for g in g_ref.values()])
    flat_var = torch.cat([g_var[k].flatten() for k in g_ref if k in g_var]) if g_var.keys() == g_ref.keys() else None
    cosines = [float(torch.nn.functional.cosine_similarity(g_ref[k].flatten(), g_var[k].flatten(), dim=0))
               for k in g_ref if k in g_var and float(g_ref[k].norm()) > 0]
    return {
        "variant": v.label,
        "loss_reference": loss_ref,
        "loss_variant": loss_var,
        "loss_rel_diff": abs(loss_var - loss_ref) / max(abs(loss_ref), 1e-12),
        "grad_rel_diff": (float((flat_var - flat_ref).norm() / flat_ref.norm().clamp_min(1e-30))
                          if flat_var is not None else float("inf")),
        "grad_cosine_min": min(cosines) if cosines else float("nan"),
        "param_names_equal": g_var.keys() == g_ref.keys(),
    }

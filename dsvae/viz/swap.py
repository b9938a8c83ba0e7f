"""What users do with a trained model: swap, sample and interpolate codes, and look at the result as a GIF.

Every function takes a run folder, a checkpoint file or a model object (any model following the
protocol of :mod:`dsvae.models.base`, so the image-level baselines' naive sequence view works too;
a model object is used on its own device, ``device`` is for loading a run) and writes one
labelled GIF grid with :func:`dsvae.viz.gif.write_gif_grid` (optionally with a PNG strip beside
it). Codes are always the posterior *means*, computed in eval mode without autograd (the model's
mode is restored after), so the same inputs give the same pictures.

- :func:`swap`: rows A, B, their reconstructions, "A static + B dynamics" = decode(f_A, z_B) and
  "B static + A dynamics" = decode(f_B, z_A); or ``random_pairs=K`` pairs, one row per pair.
- :func:`sample`: keep the static code of a sequence and draw dynamics from the model's prior
  (``fix="static"``), or keep its dynamics and draw static codes from its static prior (``fix="dynamic"``;
  N(0, I), or the mixture fitted by ``dsvae fit-prior``).
  Prior dynamics are rolled out on their own samples and shown as the per-step means of that
  roll-out (``prior_means=True``, as the evaluation protocol does; ``False`` shows the samples,
  which add per-frame noise).
- :func:`interpolate`: walk the static (or dynamic) code in a straight line from A's to B's,
  keeping A's other code; ``steps`` rows including both ends.

Sequences come from a data set split by index, or from the user's own files (see
:mod:`dsvae.viz.video_io`). The number of frames T is ``frames`` if given, else the data set's,
else 8; longer user inputs are cut to their first T frames with a
:class:`~dsvae.viz.video_io.FramesDropped` warning, shorter ones are an error.

Every user mistake (bad index, unreadable input, missing checkpoint, existing or unwritable
output, ...) raises :class:`~dsvae.errors.DsvaeError` before any output is written.
The lower-level :func:`swap_codes`, :func:`sample_codes` and :func:`interpolate_codes` return the
tensors that the grids show.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dsvae.data.dataset import SpritesDataset
from dsvae.data.schema import N_FRAMES, open_h5
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.io import check_output_path
from dsvae.viz.gif import write_gif_grid
from dsvae.viz.video_io import read_sequence

#: Frame duration of the GIFs, in milliseconds.
DEFAULT_DURATION_MS = 150
#: Row labels of a single-pair swap grid, in order.
SWAP_ROWS = ("A", "B", "reconstruction of A", "reconstruction of B", "A static + B dynamics",
             "B static + A dynamics")
#: Column labels of a random-pairs swap grid (one row per pair), in the same order.
SWAP_COLUMNS = ("A", "B", "rec. A", "rec. B", "A static\n+B dyn.", "B static\n+A dyn.")
#: Keys of :func:`swap_codes`'s videos, in the order of SWAP_ROWS.
SWAP_KEYS = ("a", "b", "recon_a", "recon_b", "a_static_b_dynamics", "b_static_a_dynamics")
PARTS = ("static", "dynamic")

Source = int | str | os.PathLike  # a data set index or a user file / folder


# ----------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (and no autograd) inside; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batched(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4:
        return x[None]
    if x.ndim != 5:
        raise DsvaeError(f"expected videos (B, T, 3, H, W) or one video (T, 3, H, W), got shape {tuple(x.shape)}")
    return x


def _decode_rows(model: nn.Module, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Decode every row on its own, so each row equals ``model.decode`` of its codes alone."""
    return torch.cat([model.decode(f[k:k + 1], z[k:k + 1]) for k in range(f.shape[0])])


def swap_codes(model: nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior means of A and B and the videos of a swap grid.

    ``xa``, ``xb``: float (B, T, 3, H, W) in [0, 1] (or one (T, 3, H, W) video each), paired row by
    row. Returns ``f_a``, ``z_a``, ``f_b``, ``z_b`` (posterior means) and the videos named in
    :data:`SWAP_KEYS`: the inputs, ``recon_a`` = decode(f_a, z_a), ``recon_b`` = decode(f_b, z_b),
    ``a_static_b_dynamics`` = decode(f_a, z_b) and ``b_static_a_dynamics`` = decode(f_b, z_a).
    A and B are encoded separately and every decode sees the whole batch.
    """
    xa, xb = _batched(xa), _batched(xb)
    if xa.shape != xb.shape:
        raise DsvaeError(f"A and B must have the same shape, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    with _evaluating(model):
        pa, pb = model.encode(xa), model.encode(xb)
        fa, za, fb, zb = pa.f_mean, pa.z_mean, pb.f_mean, pb.z_mean
        return {
            "f_a": fa, "z_a": za, "f_b": fb, "z_b": zb,
            "a": xa, "b": xb,
            "recon_a": model.decode(fa, za),
            "recon_b": model.decode(fb, zb),
            "a_static_b_dynamics": model.decode(fa, zb),
            "b_static_a_dynamics": model.decode(fb, za),
        }


def sample_codes(model: nn.Module, x: torch.Tensor, fix: str = "static", n: int = 4, seed: int = 0,
                 prior_means: bool = True) -> dict[str, torch.Tensor]:
    """Keep one part of the code of video ``x`` (T, 3, H, W) and draw ``n`` of the other from the prior.

    ``fix="static"``: f = x's static posterior mean for all n, z from ``model.sample_dynamics(n, T,
    means=prior_means)``; ``fix="dynamic"``: z = x's dynamic posterior mean for all n, f from
    ``model.sample_static(n)``. The draws are seeded with ``seed``; the global random state is left
    as it was. Returns ``f`` (n, F), ``z`` (n, T, Z), ``x`` = decode(f, z)
    (each row decoded on its own), ``source``, ``recon`` and the source's ``f_mean`` / ``z_mean``.
    Models without a prior over the drawn part raise :class:`~dsvae.errors.NotApplicable`.
    """
    if fix not in PARTS:
        raise DsvaeError(f"fix must be one of {', '.join(PARTS)}, got {fix!r}")
    _check_count(n, "number of samples", 1)
    x = _batched(x)
    if x.shape[0] != 1:
        raise DsvaeError(f"sample_codes takes one video, got {x.shape[0]}")
    device = x.device
    with _evaluating(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            if fix == "static":
                drawn = model.sample_dynamics(int(n), x.shape[1], means=prior_means)
            else:
                drawn = model.sample_static(int(n))
        except NotApplicable as exc:
            raise NotApplicable(f"cannot sample with the {fix} part fixed: {exc}") from exc
        post = model.encode(x)
        if fix == "static":
            f = post.f_mean.expand(int(n), -1)
            z = drawn.to(post.z_mean.dtype)
        else:
            f = drawn.to(post.f_mean.dtype)
            z = post.z_mean.expand(int(n), -1, -1)
        return {
            "f": f, "z": z, "x": _decode_rows(model, f, z),
            "source": x, "recon": model.decode(post.f_mean, post.z_mean),
            "f_mean": post.f_mean, "z_mean": post.z_mean,
        }


def interpolation_weights(steps: int) -> list[float]:
    """``steps`` fractions from 0 to 1, both ends exact."""
    _check_count(steps, "number of interpolation steps", 2)
    return [k / (int(steps) - 1) for k in range(int(steps))]


def interpolate_codes(model: nn.Module, xa: torch.Tensor, xb: torch.Tensor, steps: int = 5,
                      part: str = "static") -> dict[str, torch.Tensor]:
    """Straight line from A's code to B's in one part, keeping A's other part.

    ``part="static"``: f_k = (1 - w_k) f_A + w_k f_B with z = z_A; ``part="dynamic"``:
    z_k = (1 - w_k) z_A + w_k z_B with f = f_A; w_k = k / (steps - 1), so the first row is
    decode(f_A, z_A) and the last decode(f_B, z_A) (static) or decode(f_A, z_B) (dynamic).
    Returns ``weights`` (steps,), ``f``, ``z``, ``x`` (each row decoded on its own), ``a``, ``b``
    and the posterior means ``f_a``, ``z_a``, ``f_b``, ``z_b``.
    """
    if part not in PARTS:
        raise DsvaeError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    weights = interpolation_weights(steps)
    xa, xb = _batched(xa), _batched(xb)
    if xa.shape[0] != 1 or xa.shape != xb.shape:
        raise DsvaeError(f"interpolation takes two videos of the same shape, got {tuple(xa.shape)} and "
                         f"{tuple(xb.shape)}")
    with _evaluating(model):
        pa, pb = model.encode(xa), model.encode(xb)
        fa, za, fb, zb = pa.f_mean, pa.z_mean, pb.f_mean, pb.z_mean
        if part == "static":
            f = torch.cat([(1.0 - w) * fa + w * fb for w in weights])
            z = za.expand(len(weights), -1, -1)
        else:
            f = fa.expand(len(weights), -1)
            z = torch.cat([(1.0 - w) * za + w * zb for w in weights])
        return {
            "weights": torch.tensor(weights), "f": f, "z": z, "x": _decode_rows(model, f, z),
            "a": xa, "b": xb, "f_a": fa, "z_a": za, "f_b": fb, "z_b": zb,
        }


# ----------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------
def _check_count(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DsvaeError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_view(scale: Any, duration_ms: Any) -> None:
    _check_count(scale, "scale", 1)
    _check_count(duration_ms, "frame duration (ms)", 1)


def _check_outputs(out: str | os.PathLike, png: bool, overwrite: bool) -> Path:
    """The writer's own output checks, done before any work."""
    out = Path(out)
    if png and out.suffix.lower() == ".png":
        raise DsvaeError(f"GIF output {out} must not end in .png when a PNG is written beside it")
    out = check_output_path(out, overwrite=overwrite, what="GIF")
    if png:
        check_output_path(out.with_suffix(".png"), overwrite=overwrite, what="PNG")
    return out


def _load_model(run: Any, device: str | torch.device) -> nn.Module:
    if isinstance(run, nn.Module):
        return run
    from dsvae import load

    return load(run, device=device)  # load resolves "auto" / "cpu" / "cuda" itself


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_index(source: Any) -> bool:
    return isinstance(source, (int, np.integer)) and not isinstance(source, bool)


class _Inputs:
    """Videos of a list of sources (data set indices and user files), all with T frames, and their labels."""

    def __init__(self, model: nn.Module, sources: Sequence[Source], data: str | os.PathLike | None, split: str,
                 frames: int | None) -> None:
        size = int(model.config.image_size)
        indices = [int(s) for s in sources if _is_index(s)]
        data_frames = None
        if indices and data is None:
            raise DsvaeError("sequences given by index need a data set (--data FILE.h5)")
        if data is not None:
            n_total, data_frames = split_size(data, split)
            for i in indices:
                if not 0 <= i < n_total:
                    raise DsvaeError(f"index {i} out of range: split '{split}' of {data} has {n_total} "
                                     f"sequences (0..{n_total - 1})")
        if frames is not None:
            _check_count(frames, "number of frames", 1)
            if data_frames is not None and frames > data_frames:
                raise DsvaeError(f"the data set's sequences have {data_frames} frames; cannot use {frames}")
        self.frames = int(frames or data_frames or N_FRAMES)
        ds, from_data = None, iter(())
        if indices:
            unique = sorted(set(indices))
            ds = SpritesDataset(data, split, image_size=size, indices=unique)
            batch = ds.batch([unique.index(i) for i in indices])
            from_data = iter(zip(batch["x"][:, :self.frames], batch["action"].tolist(), batch["attributes"].tolist()))
        videos, self.labels = [], []
        for source in sources:
            if _is_index(source):
                x, action, attributes = next(from_data)
                videos.append(x)
                self.labels.append(_describe(ds, int(source), action, attributes))
            else:
                videos.append(read_sequence(source, size, self.frames))
                self.labels.append(Path(source).name or str(source))
        self.x = torch.stack(videos).to(_model_device(model))


def split_size(data: str | os.PathLike, split: str) -> tuple[int, int]:
    """(number of sequences, frames per sequence) of a split of a data set file."""
    with open_h5(data) as f:
        if split not in f:
            raise DsvaeError(f"data set {data} has no '{split}' split (has: {', '.join(f.keys())})")
        shape = f[split]["videos"].shape
    return int(shape[0]), int(shape[1])


def _describe(ds: SpritesDataset, index: int, action: int, attributes: Sequence[int]) -> str:
    """'#index motion: value, value, ...' of a data set sequence."""
    motions = ds.motion_names
    motion = motions[action] if 0 <= action < len(motions) else f"motion {action}"
    values = []
    for name, v in zip(ds.factor_names, attributes):
        names = ds.factor_values(name)
        values.append(names[v] if 0 <= v < len(names) else f"{name} {v}")
    return f"#{index} {motion}: {', '.join(values)}"


def _two_lines(label: str) -> str:
    """A data set description on two lines (index and motion; factor values)."""
    head, sep, rest = label.partition(": ")
    return f"{head}\n{rest}" if sep else label


def _write(rows: list[list[torch.Tensor]], out: Path, labels: list[str], col_labels: list[str] | None, scale: int,
           duration_ms: int, png: bool, overwrite: bool) -> Path:
    cpu_rows = [[seq.detach().float().cpu() for seq in row] for row in rows]
    return write_gif_grid(cpu_rows, out, labels=labels, col_labels=col_labels, scale=scale, duration_ms=duration_ms,
                          png=png, overwrite=overwrite)


def _random_pairs(n_total: int, k: int, seed: int) -> list[tuple[int, int]]:
    if n_total < 2:
        raise DsvaeError(f"random pairs need at least 2 sequences, the split has {n_total}")
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.choice(n_total, size=2, replace=False)) for _ in range(k)]


def _swap_sources(pair: Any, a: Any, b: Any) -> tuple[Source, Source]:
    """(A, B) sources from --pair and --a/--b: a file replaces its side's index."""
    if a is not None and b is not None:
        if pair is not None:
            raise DsvaeError("--pair is not used when both --a and --b are given; leave it out")
        return a, b
    if pair is None:
        raise DsvaeError("say which sequences to swap: --pair I J, --a/--b files, or --random K")
    indices = [pair] if _is_index(pair) else list(pair)
    if not all(_is_index(i) for i in indices):
        raise DsvaeError(f"--pair takes data set indices (integers), got {pair!r}")
    if a is None and b is None:
        if len(indices) != 2:
            raise DsvaeError(f"--pair takes two indices I J, got {len(indices)}")
        return indices[0], indices[1]
    if len(indices) not in (1, 2):
        raise DsvaeError(f"--pair takes one or two indices, got {len(indices)}")
    # one file given: the other sequence is the index on its side (or the only index)
    if a is not None:
        return a, indices[-1]
    return indices[0], b


# ----------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------
def swap(run: Any, data: str | os.PathLike | None = None, pair: Any = None, out: str | os.PathLike = "swap.gif",
         split: str = "test", a: str | os.PathLike | None = None, b: str | os.PathLike | None = None,
         random_pairs: int | None = None, seed: int = 0, frames: int | None = None, png: bool = False,
         scale: int = 4, duration_ms: int = DEFAULT_DURATION_MS, overwrite: bool = False,
         device: str | torch.device = "cpu") -> Path:
    """Write a swap grid (see the module docstring) and return its path.

    Sequences: ``pair=(i, j)`` indices into ``split`` of ``data``; ``a`` / ``b`` the user's own
    files instead (with one of them, ``pair`` may be the other sequence's index alone);
    or ``random_pairs=K`` pairs drawn with ``seed`` (one row per pair, columns
    :data:`SWAP_COLUMNS`). A single pair gives one column with rows :data:`SWAP_ROWS`.
    """
    _check_view(scale, duration_ms)
    if random_pairs is not None:
        if pair is not None or a is not None or b is not None:
            raise DsvaeError("--random draws its own pairs; leave out --pair, --a and --b")
        _check_count(random_pairs, "number of random pairs", 1)
        if data is None:
            raise DsvaeError("--random needs a data set (--data FILE.h5)")
        n_total, _ = split_size(data, split)
        pairs = _random_pairs(n_total, int(random_pairs), seed)
        sources: list[Source] = [i for p in pairs for i in p]
    else:
        sources = list(_swap_sources(pair, a, b))
    out = _check_outputs(out, png, overwrite)
    model = _load_model(run, device)
    inputs = _Inputs(model, sources, data, split, frames)
    xa, xb = inputs.x[0::2], inputs.x[1::2]
    res = swap_codes(model, xa, xb)
    if random_pairs is None:
        rows = [[res[key][0]] for key in SWAP_KEYS]
        labels = [f"A: {_two_lines(inputs.labels[0])}", f"B: {_two_lines(inputs.labels[1])}", *SWAP_ROWS[2:]]
        return _write(rows, out, labels, None, scale, duration_ms, png, overwrite)
    rows = [[res[key][k] for key in SWAP_KEYS] for k in range(len(pairs))]
    labels = [f"A {inputs.labels[2 * k]}\nB {inputs.labels[2 * k + 1]}" for k in range(len(pairs))]
    return _write(rows, out, labels, list(SWAP_COLUMNS), scale, duration_ms, png, overwrite)


def sample(run: Any, data: str | os.PathLike | None = None, fix: str = "static", index: int | None = None,
           n: int = 4, out: str | os.PathLike = "sample.gif", split: str = "test",
           source: str | os.PathLike | None = None, seed: int = 0, prior_means: bool = True,
           frames: int | None = None, png: bool = False, scale: int = 4, duration_ms: int = DEFAULT_DURATION_MS,
           overwrite: bool = False, device: str | torch.device = "cpu") -> Path:
    """Write a grid: the sequence, its reconstruction, then ``n`` rows with one part of its code fixed.

    The sequence is ``index`` of ``split`` of ``data``, or the user's file ``source``. ``fix`` and
    ``prior_means``: see :func:`sample_codes`.
    """
    _check_view(scale, duration_ms)
    if fix not in PARTS:
        raise DsvaeError(f"--fix must be one of {', '.join(PARTS)}, got {fix!r}")
    _check_count(n, "number of samples", 1)
    if (index is None) == (source is None):
        raise DsvaeError("give exactly one of --index I (a data set sequence) and --input PATH")
    if index is not None and not _is_index(index):
        raise DsvaeError(f"--index takes a data set index (an integer), got {index!r}")
    out = _check_outputs(out, png, overwrite)
    model = _load_model(run, device)
    inputs = _Inputs(model, [index if source is None else source], data, split, frames)
    res = sample_codes(model, inputs.x[0], fix=fix, n=n, seed=seed, prior_means=prior_means)
    drawn = "prior dynamics" if fix == "static" else "prior static"
    kept = "static" if fix == "static" else "dynamics"
    rows = [[res["source"][0]], [res["recon"][0]]] + [[x] for x in res["x"]]
    labels = [_two_lines(inputs.labels[0]), "reconstruction"]
    labels += [f"its {kept} + {drawn} {k + 1}" for k in range(int(n))]
    return _write(rows, out, labels, None, scale, duration_ms, png, overwrite)


def interpolate(run: Any, data: str | os.PathLike | None = None, pair: Any = None, steps: int = 5,
                part: str = "static", out: str | os.PathLike = "interp.gif", split: str = "test",
                a: str | os.PathLike | None = None, b: str | os.PathLike | None = None, frames: int | None = None,
                png: bool = False, scale: int = 4, duration_ms: int = DEFAULT_DURATION_MS, overwrite: bool = False,
                device: str | torch.device = "cpu") -> Path:
    """Write a grid: A, B, then ``steps`` rows walking ``part`` of the code from A's to B's.

    Rows are labelled with the fraction of the way from A to B. Sequences as in :func:`swap`
    (``pair`` indices, or ``a`` / ``b`` files); codes as in :func:`interpolate_codes`.
    """
    _check_view(scale, duration_ms)
    if part not in PARTS:
        raise DsvaeError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    interpolation_weights(steps)  # checks steps
    sources = list(_swap_sources(pair, a, b))
    out = _check_outputs(out, png, overwrite)
    model = _load_model(run, device)
    inputs = _Inputs(model, sources, data, split, frames)
    res = interpolate_codes(model, inputs.x[0], inputs.x[1], steps=steps, part=part)
    kept = "dynamics" if part == "static" else "static"
    rows = [[res["a"][0]], [res["b"][0]]] + [[x] for x in res["x"]]
    labels = [f"A: {_two_lines(inputs.labels[0])}", f"B: {_two_lines(inputs.labels[1])}"]
    labels += [f"{part} {w:.2f}\n{kept} of A" for w in res["weights"].tolist()]
    return _write(rows, out, labels, None, scale, duration_ms, png, overwrite)

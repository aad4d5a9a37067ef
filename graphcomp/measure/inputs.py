"""Inputs for running a model: the session factory and the one input source.

Sources (`Source`): the user's calibration samples (`--calibration-data`), the
user's verification inputs (`load_inputs`, `--inputs`), or a seeded synthetic prior
by name, one vocabulary for every pass (`PRIORS`):

- "normal": N(0, 1) floats, integers in [0, 2), random bools (`make_inputs`, also
  what verify and bench feed);
- "smooth": natural-image-like floats. Each float input of rank >= 3 gets, per sample
  and channel, white noise filtered to an amplitude spectrum 1/f^2 on the last two
  axes, each plane standardized to zero mean and unit std; with several channels
  (rank 4) each channel mixes a shared field (weight 0.9) with its own; a channels-last
  image (N, H, W, C with C <= 4) is made channels-first and transposed. This is the
  generator prune was tuned with; measured on the zoo against the three generators it
  replaced (prune's, dfq's 1/f^1.5 random-phase fields, svd's 1/f fields): every dfq
  top-1 within 3 images, prune(macs=0.5) 13,692 of 17,802 images on average over two
  seeds (13,507 with the old generators), svd(macs=0.8) equal or better.

"white" is accepted as an alias of "normal" (`canonical_prior`). Measurement inputs
(`Source.batches`, either prior) follow the input's kind for integers: an integer
input that indexes a constant embedding table (through Cast/Unsqueeze/Reshape/...)
gets uniform ids over the table's rows, any other integer input (attention masks)
is all ones. Synthetic samples are generated in seeded blocks of `BLOCK` and then
cut into the caller's batches, so the samples do not depend on the batch size.
The last synthetic inputs made (up to `CACHE_BYTES`, read-only) are kept and handed
to the next `Source` with the same prior, count, seed, shapes and model inputs: the
steps of one run that measure on the same prior generate them once.
Dynamic dims take `shapes` overrides (the user's, used as they are: never resized
here), else `batch` for the first dim and `DEFAULT_DYNAMIC_DIM` for the others, with one
value per symbolic dim name across all inputs (`resolve_dims`). Known dims, 0 included,
stay. Inputs of every onnxruntime tensor type are generated in their own dtype
(`NP_TYPES`; strings from a few words); a type numpy cannot hold (bfloat16) is refused
with a hint to pass `--inputs`. When some input's first dim is fixed (static, scalar or
user-given), synthetic blocks are yielded whole: they cannot be cut into other batches.
A user-given first dim on an input whose first dim is free in the model sets the
generated blocks' size; with `join` (a caller that retries without it: a model can
declare a free batch dim and still run only at the user's) the blocks are joined for the
runs, up to the caller's batch and BLOCK_BYTES of inputs: a model measured at
`--input-shape ids:1x16` then runs 16 samples at a time, not one, on the same samples.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from graphcomp.core import model_io
from graphcomp.core.errors import ConfigError, UnsupportedModelError

Feeds = dict[str, np.ndarray]
# onnxruntime's own exception classes derive from Exception directly.
ORT_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    *(
        cls
        for cls in vars(ort_state).values()
        if isinstance(cls, type) and issubclass(cls, Exception)
    ),
)
SHAPE_HINT = "give --input-shape NAME:DIMS or --inputs FILE.npz"
DEFAULT_DYNAMIC_DIM = 64
ORT_OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
PRIORS = ("smooth", "normal")
PRIOR_ALIASES = {"white": "normal"}
DEFAULT_PRIOR = "smooth"
SMOOTH_EXPONENT = 2.0  # amplitude spectrum 1/f^SMOOTH_EXPONENT (see the module docstring)
CHANNEL_CORR = 0.9  # share of a smooth image common to all its channels
MAX_CHANNELS_LAST = 4  # a rank-4 input whose last dim is at most this (and H, W larger): NHWC
BLOCK = 32  # synthetic samples generated per seeded block (fewer for large inputs)
BLOCK_BYTES = 32 << 20  # input bytes generated per block at most
REF_PIXELS = 112 * 112  # synthetic sample counts hold for images up to this size
MIN_SHARE = 8  # larger images get proportionally fewer samples, never under 1/MIN_SHARE
CACHE_BYTES = 256 << 20  # synthetic inputs kept for the next measurement, at most
SMOOTH_SEED = 7919  # offset of the smooth fields' generator from the sample seed
PASS_THROUGH = ("Cast", "Unsqueeze", "Reshape", "Squeeze", "Flatten", "Identity")
MAX_WALK = 4  # nodes followed from an integer input to its Gather
TINY = 1e-12
# onnxruntime type string -> numpy dtype of a feed (bfloat16 and float8 have no numpy dtype)
NP_TYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}
WORDS = np.array(["a", "b", "graph", ""], dtype=object)  # synthetic string inputs


class InputArg(Protocol):
    """What `make_inputs` reads of a model input (onnxruntime's NodeArg has it)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def type(self) -> str: ...  # noqa: D102
    @property
    def shape(self) -> Sequence[int | str | None]: ...  # noqa: D102


@dataclasses.dataclass(frozen=True)
class Arg:
    """A graph input read from the proto: name, onnxruntime type string, dims."""

    name: str
    type: str
    shape: list[int | str | None]


def session(
    model: onnx.ModelProto | str | Path, threads: int = 0, mem_pattern: bool = True
) -> ort.InferenceSession:
    """The one CPU onnxruntime session factory; large protos go through a file.

    A model with weights on disk (graphcomp/core/lazy_weights.py) opens from a file
    beside them: onnxruntime memory-maps them, and with prepacking off it keeps no
    second, packed copy, so the session costs the weights it touches and no more.
    `mem_pattern=False` for a session that outputs many intermediate tensors: the
    planned arena would hold all of them at once for every batch size it has seen.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ORT_OPT_LEVEL
    opts.enable_mem_pattern = mem_pattern
    opts.log_severity_level = 4  # graphcomp reports failures itself, in one line
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if isinstance(model, (str, Path)):
        return ort.InferenceSession(str(model), opts, providers=providers)
    if model_io.is_lazy(model):
        opts.add_session_config_entry("session.disable_prepacking", "1")
    elif not model_io.needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    with model_io.on_disk(model) as path:
        return ort.InferenceSession(str(path), opts, providers=providers)


def describe(feeds: Mapping[str, np.ndarray]) -> str:
    """`name:1x3x8x8, ids:8` (the shapes of a feed, for messages)."""
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())


def run_error(error: BaseException, feeds: Mapping[str, np.ndarray], what: str) -> ConfigError:
    """One-line ConfigError for onnxruntime failing on `feeds` (the user can fix the shapes)."""
    lines = str(error).strip().splitlines()
    first = lines[0][:300] if lines else type(error).__name__
    return ConfigError(
        f"onnxruntime cannot run {what} on {describe(feeds)}; {SHAPE_HINT} ({first})"
    )


def input_args(model: onnx.ModelProto) -> list[Arg]:
    """The real graph inputs of `model` (initializers excluded), as onnxruntime lists them."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
        out.append(Arg(value.name, ort_type(tensor.elem_type), dims))
    return out


def ort_type(elem_type: int) -> str:
    """The onnxruntime type string of an ONNX element type ("tensor(float)" when unset)."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return "tensor(float)"
    name = onnx.TensorProto.DataType.Name(elem_type).lower()
    return f"tensor({ {'float32': 'float', 'float64': 'double'}.get(name, name) })"


def check_shapes(shapes: Mapping[str, list[int]], args: Sequence[InputArg]) -> None:
    """ConfigError when `--input-shape` names an input the model lacks or has another rank."""
    ranks = {a.name: len(a.shape) for a in args}
    for name, dims in shapes.items():
        if name not in ranks:
            have = ", ".join(ranks) or "none"
            raise ConfigError(f"--input-shape names no input '{name}'; the inputs are: {have}")
        if ranks[name] != len(dims) and ranks[name] > 0:
            raise ConfigError(
                f"--input-shape {name}: {len(dims)} dims given, the input has {ranks[name]}"
            )


def resolve_dims(
    args: Sequence[InputArg], shapes: Mapping[str, list[int]] | None = None, batch: int = 8
) -> dict[str, list[int]]:
    """Concrete dims of every input: one value per symbolic dim name across all inputs.

    A user-given shape (`shapes`) is used as it is and binds the names of the dims it
    fixes; a known dim (0 included) stays; any other symbolic dim takes the value its
    name was first bound to, else `batch` for the first dim and `DEFAULT_DYNAMIC_DIM`.
    """
    shapes = shapes or {}
    bound: dict[str, int] = {}
    for arg in args:
        given = shapes.get(arg.name)
        if given is not None and len(given) == len(arg.shape):
            for d, v in zip(arg.shape, given, strict=True):
                if isinstance(d, str) and d:
                    bound.setdefault(d, int(v))
    out = {}
    for arg in args:
        given = shapes.get(arg.name)
        if given is not None:
            out[arg.name] = [int(v) for v in given]
            continue
        dims = []
        for i, d in enumerate(arg.shape):
            if isinstance(d, int) and d >= 0:
                dims.append(d)
                continue
            value = batch if i == 0 else DEFAULT_DYNAMIC_DIM
            if isinstance(d, str) and d:
                value = bound.setdefault(d, value)
            dims.append(value)
        out[arg.name] = dims
    return out


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """`["input:1x3x224x224"]` -> {"input": [1, 3, 224, 224]}."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise ConfigError(f"bad --input-shape '{item}': expected name:1x3x224x224") from None
        if not name or any(d <= 0 for d in shapes[name]):
            raise ConfigError(f"bad --input-shape '{item}': expected name:1x3x224x224")
    return shapes


def canonical_prior(prior: str) -> str:
    """The prior's name in `PRIORS` ("white" is "normal"); ConfigError when unknown."""
    name = PRIOR_ALIASES.get(prior, prior)
    if name not in PRIORS:
        raise ConfigError(f"unknown synthetic prior '{prior}'; choose from {PRIORS}")
    return name


def make_inputs(
    sess: ort.InferenceSession | Sequence[InputArg],
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    batch: int = 8,
) -> Feeds:
    """Seeded "normal" inputs for every model input, dynamic dims resolved as documented."""
    rng = np.random.default_rng(seed)
    args = sess.get_inputs() if isinstance(sess, ort.InferenceSession) else sess
    dims = resolve_dims(args, shapes, batch)
    return {arg.name: _random(rng, arg.type, dims[arg.name]) for arg in args}


def _random(rng: np.random.Generator, ort_type: str, dims: list[int]) -> np.ndarray:
    dtype = NP_TYPES.get(ort_type)
    if dtype is None:
        raise UnsupportedModelError(
            f"cannot make inputs of type {ort_type}; pass --inputs FILE.npz with that input"
        )
    if dtype is np.object_:
        return np.asarray(WORDS[rng.integers(0, len(WORDS), dims)], dtype=object)  # 0-d too
    if dtype is np.bool_:
        return rng.integers(0, 2, dims).astype(bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, dims).astype(dtype)
    return rng.standard_normal(dims).astype(dtype)


def load_inputs(
    path: str | Path, sess: ort.InferenceSession | Sequence[InputArg]
) -> dict[str, np.ndarray]:
    """Read an .npz of named inputs (the user's verification inputs), cast to the model's types."""
    data = read_npz(path, "inputs")
    args = sess.get_inputs() if isinstance(sess, ort.InferenceSession) else sess
    feeds = {}
    for arg in args:
        if arg.name not in data:
            have = ", ".join(data) or "no arrays"
            raise ConfigError(f"{path}: no array named '{arg.name}' (has {have})")
        feeds[arg.name] = _cast(data[arg.name], arg.type)
    return feeds


def read_npz(path: str | os.PathLike[str], what: str) -> dict[str, np.ndarray]:
    """The arrays of a numpy .npz by name; one-line ConfigError when it is not one.

    Strings are read from unicode arrays (np.savez of a `str` array); pickled object
    arrays are refused (loading them can run code).
    """
    errors = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except errors as e:
        raise _npz_error(path, what, e) from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path}: {what} must be an .npz of named arrays (np.savez)")
    try:
        with data:
            return {k: np.asarray(data[k]) for k in data.files}
    except errors as e:
        raise _npz_error(path, what, e) from e


def _npz_error(path: str | os.PathLike[str], what: str, error: Exception) -> ConfigError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "allow_pickle" in message and "Object arrays" in message:
        message = "it holds pickled object arrays; save strings as np.str_ arrays"
    elif "pickled" in message or "interpret" in message:
        message = "not a numpy .npz file"
    return ConfigError(f"{path}: cannot read {what} ({message})")


def _cast(array: np.ndarray, ort_type: str) -> np.ndarray:
    dtype = NP_TYPES.get(ort_type)
    if dtype is None:
        return array
    if dtype is np.object_:
        return array.astype(object)
    return array.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """Where a measurement's inputs come from: the user's samples, else a named prior.

    `data` (input name -> array, samples on axis 0) wins when given, its first `limit`
    samples (all when None); else `samples` synthetic inputs of `prior` from `seed`.
    """

    data: Mapping[str, np.ndarray] | None = None
    prior: str = DEFAULT_PRIOR
    samples: int = 64
    seed: int = 0
    shapes: Mapping[str, list[int]] | None = None
    limit: int | None = None
    join: bool = False  # join blocks of a user-fixed batch on the model's free batch dim

    @property
    def label(self) -> str:
        """The source's name in reports: calibration or synthetic."""
        return "calibration" if self.data is not None else "synthetic"

    def count(self, model: onnx.ModelProto) -> int:
        """How many samples `batches` gives."""
        if self.data is None:
            return self._plan(model)[0]
        rows = sample_rows(input_args(model))
        have = min((len(self.data[n]) // r for n, r in rows.items() if n in self.data), default=0)
        return have if self.limit is None else min(have, self.limit)

    def batches(self, model: onnx.ModelProto, batch: int = BLOCK) -> Iterator[Feeds]:
        """The inputs in batches of `batch` samples (the last may be smaller)."""
        if self.data is not None:
            yield from _calibration(model, self.data, batch, self.limit)
        elif not self._batched(model) or (self._user_batch() and not self.join):
            yield from self._blocks(model)  # a fixed or scalar first dim, or the user's batch
        elif self._user_batch():  # blocks of the user's batch, joined up to a native block
            yield from _rebatch(self._blocks(model), min(batch, self._plan(model)[1]))
        elif batch == BLOCK:
            yield from self._blocks(model)
        else:
            yield from _rebatch(self._blocks(model), batch)

    def _batched(self, model: onnx.ModelProto) -> bool:
        """True when every input's first dim is free in the model: a sample axis.

        A user-given shape fixes each generated block's first dim (the same for all
        inputs), not the runs': such blocks are joined on the model's free first dim.
        """
        return len(self._user_batch_dims()) <= 1 and all(
            a.shape and not isinstance(a.shape[0], int) for a in input_args(model)
        )

    def _user_batch_dims(self) -> set[int]:
        return {int(v[0]) for v in (self.shapes or {}).values() if v}

    def _user_batch(self) -> bool:
        return bool(self._user_batch_dims())

    def values_per_sample(self, model: onnx.ModelProto) -> int:
        """Values one synthetic sample holds (all inputs), dynamic dims resolved."""
        return sum(int(v.size) for v in self._one(model).values())

    def _plan(self, model: onnx.ModelProto) -> tuple[int, int]:
        return plan_synthetic(self._one(model), self.samples)

    def _one(self, model: onnx.ModelProto) -> Feeds:
        shapes = {k: [1, *v[1:]] for k, v in (self.shapes or {}).items()}
        return make_inputs(input_args(model), shapes, seed=self.seed, batch=1)

    def _blocks(self, model: onnx.ModelProto) -> Iterator[Feeds]:
        """The seeded blocks; made once and kept while they fit in CACHE_BYTES."""
        args = input_args(model)
        key = (
            canonical_prior(self.prior),
            self.samples,
            self.seed,
            tuple((k, tuple(v)) for k, v in sorted((self.shapes or {}).items())),
            tuple((a.name, a.type, tuple(a.shape)) for a in args),
            tuple(sorted(embedding_rows(model).items())),
        )
        if key not in _MADE:
            one = self._one(model)
            samples, _ = plan_synthetic(one, self.samples)
            if samples * sum(v.nbytes for v in one.values()) > CACHE_BYTES:
                yield from self._generate(model)
                return
            _MADE.clear()
            _MADE[key] = [_frozen(feeds) for feeds in self._generate(model)]
        yield from _MADE[key]

    def _generate(self, model: onnx.ModelProto) -> Iterator[Feeds]:
        prior = canonical_prior(self.prior)
        args = input_args(model)
        tables = embedding_rows(model)
        fields = np.random.default_rng(self.seed + SMOOTH_SEED)
        ids = np.random.default_rng(self.seed)
        samples, block = self._plan(model)
        # a user-fixed first dim is the block size (each block then counts its samples)
        fixed = [v[0] for v in (self.shapes or {}).values() if v]
        done = 0
        while done < samples:
            size = min(fixed) if fixed else min(block, samples - done)
            # user-fixed shapes are used as they are (their batch too)
            feeds = make_inputs(args, dict(self.shapes or {}), seed=self.seed + done, batch=size)
            for name, value in feeds.items():
                if np.issubdtype(value.dtype, np.integer):
                    rows = tables.get(name)
                    feeds[name] = (
                        ids.integers(0, rows, value.shape).astype(value.dtype)
                        if rows
                        else np.ones_like(value)
                    )
                elif (
                    prior == "smooth"
                    and value.ndim >= 3
                    and np.issubdtype(value.dtype, np.floating)
                ):
                    feeds[name] = smooth_field(fields, value.shape).astype(value.dtype)
            yield feeds
            done += max(samples_in(feeds), 1)  # a model's static batch may differ from size


_MADE: dict[tuple, list[Feeds]] = {}  # the last synthetic inputs `Source` made


def _frozen(feeds: Feeds) -> Feeds:
    for value in feeds.values():
        value.flags.writeable = False
    return feeds


def samples_in(feeds: Feeds) -> int:
    """Samples in one batch: the first axis of its first input (1 for a scalar)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) > 0 else 1


def plan_synthetic(one: Feeds, samples: int) -> tuple[int, int]:
    """(samples, block) for synthetic inputs shaped like the single sample `one`.

    A per-channel statistic of an image layer averages samples x H x W values, so images
    larger than REF_PIXELS need proportionally fewer samples for the same estimate (at
    least samples // MIN_SHARE and one, at most `samples`): 64 asked stay 64 up to 112x112,
    are 16 at 224x224 and 8 from 317x317. Blocks hold at most BLOCK_BYTES of inputs. Both
    depend only on the model's input shapes, so the samples stay the same for any batch.
    """
    pixels = max(
        (v.shape[-2] * v.shape[-1] for v in one.values() if v.ndim >= 3 and v.dtype.kind == "f"),
        default=0,
    )
    if pixels > REF_PIXELS:
        floor = max(1, samples // MIN_SHARE)
        samples = min(samples, max(floor, math.ceil(samples * REF_PIXELS / pixels)))
    per_sample = max(sum(v.nbytes for v in one.values()), 1)
    return samples, int(min(BLOCK, max(1, BLOCK_BYTES // per_sample)))


def smooth_field(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    exponent: float = SMOOTH_EXPONENT,
    channel_corr: float = CHANNEL_CORR,
) -> np.ndarray:
    """The "smooth" prior: 1/f^exponent noise on the last two axes, channels mixed.

    A channels-last image (N, H, W, C with C <= MAX_CHANNELS_LAST < H, as Keras exports
    write, MTCNN's nets among them) gets the same field made channels-first and
    transposed, so the low-pass runs over H and W, not over W and the colours.
    """
    if len(shape) == 4 and shape[3] <= MAX_CHANNELS_LAST < min(shape[1], shape[2]):
        first = smooth_field(rng, (shape[0], shape[3], shape[1], shape[2]), exponent, channel_corr)
        return np.ascontiguousarray(first.transpose(0, 2, 3, 1))
    own = _pink(rng, shape, exponent)
    if len(shape) != 4 or shape[1] < 2 or channel_corr <= 0.0:
        return own
    shared = _pink(rng, (shape[0], 1, *shape[2:]), exponent)
    return np.sqrt(channel_corr) * shared + np.sqrt(1.0 - channel_corr) * own


def _pink(rng: np.random.Generator, shape: tuple[int, ...], exponent: float) -> np.ndarray:
    """White noise filtered to an amplitude spectrum 1/f^exponent, each plane standardized."""
    h, w = shape[-2], shape[-1]
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    radius[0, 0] = 1.0 / max(h, w)
    white = rng.standard_normal(shape)
    noise = np.fft.irfft2(np.fft.rfft2(white) / radius**exponent, s=(h, w))
    noise = noise - noise.mean(axis=(-2, -1), keepdims=True)
    return noise / np.maximum(noise.std(axis=(-2, -1), keepdims=True), TINY)


def _calibration(
    model: onnx.ModelProto, data: Mapping[str, np.ndarray], batch: int, limit: int | None
) -> Iterator[Feeds]:
    args = input_args(model)
    names = [a.name for a in args]
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(
            f"calibration data has no array for input(s) {missing}; it has {sorted(data)}"
        )
    rows = sample_rows(args)
    count = min(len(data[n]) // rows[n] for n in names) if names else 0
    if count == 0:
        raise ConfigError("calibration data is empty")
    count = count if limit is None else min(count, limit)
    if any(a.shape and isinstance(a.shape[0], int) for a in args):
        batch = 1  # a static first dim: one sample (its rows of every input) per run
    for i in range(0, count, batch):
        end = min(i + batch, count)
        yield {n: np.ascontiguousarray(data[n][i * rows[n] : end * rows[n]]) for n in names}


def sample_rows(args: Sequence[InputArg]) -> dict[str, int]:
    """Rows of axis 0 one calibration sample holds per input: a static first dim's size, else 1.

    Samples are joined on axis 0, so a batch-1 input takes one row per sample and a state
    input of static shape [2, 1, 128] takes two.
    """
    return {
        a.name: a.shape[0] if a.shape and isinstance(a.shape[0], int) and a.shape[0] > 0 else 1
        for a in args
    }


def _rebatch(blocks: Iterator[Feeds], batch: int) -> Iterator[Feeds]:
    """Cut and join the generated blocks into batches of `batch` samples."""
    parts: list[Feeds] = []
    have = 0
    for block in blocks:
        start, size = 0, len(next(iter(block.values()))) if block else 0
        while start < size:
            take = min(batch - have, size - start)
            parts.append({k: v[start : start + take] for k, v in block.items()})
            have, start = have + take, start + take
            if have == batch:
                yield _join(parts)
                parts, have = [], 0
    if parts:
        yield _join(parts)


def _join(parts: list[Feeds]) -> Feeds:
    if len(parts) == 1:
        return {k: np.ascontiguousarray(v) for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def embedding_rows(model: onnx.ModelProto) -> dict[str, int]:
    """Graph input name -> rows of the constant table it indexes by Gather."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found: dict[str, int] = {}
    for value in model.graph.input:
        frontier = [value.name]
        for _ in range(MAX_WALK):
            nxt = []
            for name in frontier:
                for node in readers.get(name, []):
                    if (
                        node.op_type == "Gather"
                        and node.input[1] == name
                        and node.input[0] in inits
                    ):
                        found.setdefault(value.name, int(inits[node.input[0]][0]))
                    elif node.op_type in PASS_THROUGH:
                        nxt.append(node.output[0])
            frontier = nxt
    return found

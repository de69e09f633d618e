"""Input data for verification: seeded random arrays per dtype, symbolic dims bound, or .npz files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import UsageError
from surgeon.verify.specs import Choice, Domain, InputSpec

MAX_INPUT_BYTES = 2 << 30
"""Random data for one input beyond this is refused (give verify.inputs or smaller verify.dims)."""

if TYPE_CHECKING:
    import numpy as np

    from surgeon.verify.config import VerifyConfig


def resolve_shape(spec: InputSpec, dims: Mapping[str, int], where: str = "verify.dims") -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(spec.dims):
        key = f"{spec.name}:{axis}"
        if key in dims:
            shape.append(int(dims[key]))
        elif isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        else:
            label = f"symbolic dim '{d}'" if d else "a dim with no size"
            hint = f"set {where}: {{{d}: N}}" if d else f"set {where}: {{'{key}': N}}"
            raise UsageError(f"input '{spec.name}' axis {axis} is {label}; {hint}")
    return tuple(shape)


def random_array(
    spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, rng_range: Domain | None = None
) -> np.ndarray:
    """Random data of ``spec``'s dtype at ``shape``: from ``rng_range`` (``[low, high)``, or the
    values of a :class:`~surgeon.verify.specs.Choice`) where given."""
    import numpy as np

    kind = spec.dtype.kind
    if isinstance(rng_range, Choice) and kind in "iuf":
        return rng.choice(np.asarray(rng_range, np.float64), size=shape).astype(spec.dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind == "f":
        lo, hi = rng_range or (-1.0, 1.0)
        return rng.uniform(lo, hi, shape).astype(spec.dtype)
    if kind in "iu":
        lo, hi = rng_range or (0, 4)
        return rng.integers(int(lo), int(hi), shape).astype(spec.dtype)
    if kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(spec.dtype)
    if kind in "OSU":
        return np.array(rng.choice(["a", "bc", "def"], size=shape), dtype=object)
    raise UsageError(f"input '{spec.name}': cannot make random data of dtype {spec.dtype}; give verify.inputs")


def make_feed(
    specs: Sequence[InputSpec],
    config: VerifyConfig,
    dims: Mapping[str, int] | None = None,
    seed_offset: int = 0,
    domains: Mapping[str, Domain] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random inputs. ``dims`` (sizes chosen by :func:`surgeon.verify.dims.choose_sizes`)
    win over ``verify.dims``; ``verify.ranges`` win over ``domains`` (the ranges integer inputs'
    consumers accept). An input whose data would pass :data:`MAX_INPUT_BYTES` is refused."""
    import numpy as np

    rng = np.random.default_rng(config.seed + seed_offset)
    all_dims = {**config.dims, **(dims or {})}
    shapes = {s.name: resolve_shape(s, all_dims) for s in specs}
    for s in specs:
        need = int(np.prod(shapes[s.name], dtype=np.float64)) * max(s.dtype.itemsize, 1)
        if need > MAX_INPUT_BYTES:
            raise UsageError(
                f"input '{s.name}' at shape {list(shapes[s.name])} would need {need / (1 << 30):.1f} "
                "GiB of random data "
                "(limit 2 GiB); set smaller verify.dims or give verify.inputs"
            )
    ranges: dict[str, Domain] = {**(domains or {}), **config.ranges}
    return {s.name: np.asarray(random_array(s, shapes[s.name], rng, ranges.get(s.name))) for s in specs}


def read_npz(path: Path, specs: Sequence[InputSpec], what: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` of input data (``what`` it is: "verify.inputs", "calibration"), one
    for every input of ``specs``; one line naming the file otherwise."""
    import numpy as np

    if not path.is_file():
        raise UsageError(f"{path}: {what} file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        have = ", ".join(arrays) or "nothing"
        raise UsageError(f"{path}: no array for input(s) {', '.join(missing)}; it has: {have}")
    return arrays


def conform(where: Path | str, spec: InputSpec, array: np.ndarray, stacked: bool = False) -> np.ndarray:
    """``array`` as input ``spec`` takes it: its static dims (``stacked``: samples on a first axis,
    each of the input's shape) and its dtype, converted only where no value changes on the way. A
    float array for an integer input must hold integers that fit (3.7 as a token id was fed as 3),
    a wider integer's values must fit the narrower type, an integer must be exact in a float type; a
    float into a narrower float rounds, as a feed does, but must not overflow. One line naming
    ``where``, the input and the first value that would change otherwise."""
    import warnings

    import numpy as np

    shape = array.shape[1:] if stacked else array.shape
    static = [d if isinstance(d, int) else "?" for d in spec.dims]
    if len(shape) == len(spec.dims) and any(d != "?" and d != n for d, n in zip(static, shape)):
        held = "samples have" if stacked else "has"
        raise UsageError(
            f"{where}: '{spec.name}' {held} shape {list(shape)}; the model's input is "
            f"[{', '.join(map(str, static))}]" + (" ('?': any size)" if "?" in static else "")
        )
    want = spec.dtype
    if array.dtype == want:
        return array
    if (array.dtype.kind in "OSUV") != (want.kind in "OSUV"):
        raise UsageError(f"{where}: '{spec.name}' holds {array.dtype} values; the input is {want}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # complex to real, NaN to an integer: found below
        out = array.astype(want)
        if array.dtype.kind == "f" and want.kind == "f":  # rounding is the feed's; overflow is not
            changed = np.isfinite(array) & ~np.isfinite(out)
        else:
            changed = out != array
            if array.dtype.kind in "fc":
                changed |= ~np.isfinite(array)
    if changed.any():
        at = [int(i) for i in np.unravel_index(int(np.flatnonzero(changed)[0]), array.shape)]
        place = f" at {at}" if at else ""  # a scalar has no position
        raise UsageError(
            f"{where}: '{spec.name}' holds {array[tuple(at)].item()!r}{place}, which the input's type {want} "
            f"cannot hold (it would be fed as {out[tuple(at)].item()!r}); give {want} values"
        )
    return out


def load_npz(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    arrays = read_npz(path, specs, "verify.inputs")
    return {s.name: conform(path, s, arrays[s.name]) for s in specs}

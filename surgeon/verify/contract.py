"""What a pass promises about the model it returns: the I/O contract the verifier checks.

A contract describes how the interface changed in one step, so the verifier can feed the edited
model the same data as the model before it and know which outputs must agree. Contracts are kept
as a list, one per pass, and applied in order: the feed for the source model is mapped forward
through every step, and so are the reference outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from surgeon.errors import VerificationError
from surgeon.verify.compare import OutputCheck, Tolerance

if TYPE_CHECKING:
    import numpy as np

    from surgeon.ir.model import Model

Feed = dict[str, "np.ndarray"]
OutputExpectation = Callable[[Mapping[str, "np.ndarray"], Mapping[str, "np.ndarray"]], "np.ndarray"]
"""``f(outputs_before, feed_before) -> expected array`` for one output after the step."""


class ProbeEnv(Protocol):
    """What a probe may do, at the point of the pipeline right after the step that declared it:
    make inputs at new sizes, run the model after the step (through the candidate) and the model
    before it (through the source). The verifier provides it; probes never import the verifier."""

    @property
    def candidate(self) -> Model: ...

    @property
    def contracts(self) -> Sequence[IOContract]: ...

    @property
    def step(self) -> int: ...

    @property
    def tol(self) -> Tolerance: ...

    @property
    def config(self) -> Any:
        """The verification settings (``surgeon.verify.config.VerifyConfig``)."""

    @property
    def sizes(self) -> Mapping[str, int]:
        """The size the check used for every symbol of the model after the step."""

    def make_feed(self, dims: Mapping[str, int], seed_offset: int = 1) -> dict[str, np.ndarray]: ...

    def run_after(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]: ...

    def run_before(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]: ...


class Probe(Protocol):
    """An extra run at a point of the interface the old model did not have (a new batch size,
    another upscale factor). Names are those of the model right after the step that declared it."""

    @property
    def name(self) -> str: ...

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        """The probe's verdicts, one per output it checked (or one for the probe as a whole)."""


@dataclass
class Intermediates:
    """Tensors inside the model before a step whose values its contract needs (extract: its new
    inputs and outputs are intermediate tensors). ``model`` is the model before the step with
    ``names`` exposed as extra outputs; the verifier runs it on the feed before the step."""

    model: Model
    names: list[str]


@dataclass
class IOContract:
    """How one pass changed the interface. The default (all empty) means "same interface,
    outputs equal under the pipeline's tolerance".

    Values and interface are declared apart: ``feed_transforms``, ``expectations`` and
    ``derived_inputs`` say how to compute a port's value, never that its dtype or static dims may
    change. A step that changes those declares the port in ``changed_types`` / ``changed_dims``
    (names after the step); the interface check fails any other change."""

    renamed_inputs: dict[str, str] = field(default_factory=dict)
    renamed_outputs: dict[str, str] = field(default_factory=dict)
    new_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Inputs the step added, with the constant value they replace (fed to reproduce the old model)."""
    removed_inputs: set[str] = field(default_factory=set)
    """Inputs the step removed (no longer fed). Names before the step."""
    removed_outputs: set[str] = field(default_factory=set)
    """Outputs the step removed (no longer compared). Names before the step."""
    added_outputs: set[str] = field(default_factory=set)
    """Outputs the step added: the model must produce them; there is nothing to compare them with."""
    expectations: dict[str, OutputExpectation] = field(default_factory=dict)
    """Outputs (names after the step) whose expected value is computed from the outputs before it.
    An output that keeps its name keeps its dtype and static dims unless ``changed_types`` /
    ``changed_dims`` name it too."""
    feed_transforms: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = field(default_factory=dict)
    """Inputs (names after the step) whose value is computed from the feed before it. Like
    ``expectations``, this frees neither dtype nor dims."""
    intermediates: Intermediates | None = None
    """Values of tensors inside the model before the step, given to ``feed_transforms`` (in their
    ``feed_before``) and ``expectations`` (in their ``outputs_before``) under their own names."""
    derived_inputs: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = field(default_factory=dict)
    """Inputs of the model before the step (names before it) computed from the feed after it, for
    steps that change an input's domain (prepend-op: uint8 NHWC image -> float NCHW). Such a feed
    cannot be mapped forward: the verifier makes random data for the model after the step and
    derives the feed before it, and the reference, backwards. The new dtype or dims of such an
    input are declared in ``changed_types`` / ``changed_dims`` under its name after the step (and
    a new name in ``renamed_inputs``), like any other change."""
    probes: list[Probe] = field(default_factory=list)
    changed_dims: set[str] = field(default_factory=set)
    """Inputs and outputs (names after the step) whose dims the step changed on purpose (a size
    made symbolic or fixed). Any other change of a static dim fails the interface check."""
    changed_axes: dict[str, set[int]] = field(default_factory=dict)
    """Inputs and outputs (names after the step) of which only these axes changed size on purpose
    (promote-resize-scales: the axes the factor scales); the rank and every other static dim must
    stay."""
    changed_types: set[str] = field(default_factory=set)
    """Inputs and outputs (names after the step) whose element type the step changed on purpose."""
    reordered: bool = False
    """The step reorders inputs or outputs on purpose (otherwise their order must be kept)."""
    traced_dims: dict[str, int] = field(default_factory=dict)
    """Symbols the step introduced, with the size their axes had before it (verification uses it
    where no data and no ``verify.dims`` gives one)."""

    def declare_changes(
        self,
        before: Mapping[str, tuple[Any, Any]],
        after: Mapping[str, tuple[Any, Any]],
        axes: Mapping[str, set[int]] | None = None,
    ) -> None:
        """Declare every input/output whose ``(dtype, shape)`` differs between two snapshots
        (:func:`io_types`) as changed on purpose; with ``axes``, a port's dims only along the axes
        given for it (a change elsewhere stays undeclared, and fails the interface check)."""
        for name, (dtype, shape) in after.items():
            if name in before:
                old_dtype, old_shape = before[name]
                if _shape(old_shape) != _shape(shape):
                    if axes is None:
                        self.changed_dims.add(name)
                    elif axes.get(name):
                        self.changed_axes.setdefault(name, set()).update(axes[name])
                if old_dtype is not None and dtype is not None and old_dtype != dtype:
                    self.changed_types.add(name)

    def map_feed(self, feed: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray] | None = None) -> Feed:
        """Feed for the model after the step, given the feed of the model before it (and the
        values of ``intermediates`` in ``extra``)."""
        if self.derived_inputs:
            names = ", ".join(self.derived_inputs)
            raise VerificationError(
                f"input(s) {names} changed domain: their feed is derived backwards, not mapped forward"
            )
        out: Feed = {}
        for name, value in feed.items():
            if name in self.removed_inputs:
                continue
            out[self.renamed_inputs.get(name, name)] = value
        out.update(self.new_inputs)
        seen = {**feed, **extra} if extra else feed
        for name, fn in self.feed_transforms.items():
            out[name] = fn(seen)
        return out

    def unmap_feed(self, feed: Mapping[str, np.ndarray]) -> Feed:
        """Feed for the model before the step, given one for the model after it (renames undone,
        added inputs dropped so the old model uses the constant they replaced)."""
        back = {new: old for old, new in self.renamed_inputs.items()}
        out = {
            back.get(name, name): value
            for name, value in feed.items()
            if name not in self.new_inputs and name not in self.feed_transforms
        }
        out.update({name: fn(feed) for name, fn in self.derived_inputs.items()})
        return out

    def map_outputs(
        self,
        outputs: Mapping[str, np.ndarray],
        feed: Mapping[str, np.ndarray],
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> Feed:
        """Expected outputs of the model after the step, from the outputs of the model before it."""
        out: Feed = {}
        for name, value in outputs.items():
            if name in self.removed_outputs:
                continue
            out[self.renamed_outputs.get(name, name)] = value
        seen = {**outputs, **extra} if extra else outputs
        for name, fn in self.expectations.items():
            out[name] = fn(seen, feed)
        return out


def io_types(graph: Any) -> dict[str, tuple[Any, Any]]:
    """``{name: (dtype, shape)}`` of a graph's inputs and outputs (an onnx-graphsurgeon graph)."""
    return {t.name: (t.dtype, _shape(t.shape)) for t in [*graph.inputs, *graph.outputs]}


def unknown_axes(io: Mapping[str, tuple[Any, Any]]) -> dict[str, set[int]]:
    """Per port of an :func:`io_types` snapshot, the axes without a static size: where a pass
    that only makes sizes known (fix-dims, simplify with input_shapes) may change dims."""
    return {
        name: {k for k, d in enumerate(shape or ()) if not (isinstance(d, int) and d > 0)}
        for name, (_, shape) in io.items()
    }


def _shape(shape: Any) -> tuple[Any, ...] | None:
    return None if shape is None else tuple(shape)

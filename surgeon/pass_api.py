"""The pass framework: typed params, explicit registration, results with an I/O contract.

Pass modules must not import onnx, onnxruntime or torch at module level (import them inside the
functions that use them) so ``surgeon passes`` and ``surgeon --help`` start fast.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from surgeon.catalog import PassEntry, catalog
from surgeon.errors import PassError, RecipeError, SurgeonError, UsageError, suggest
from surgeon.verify.compare import Tolerance
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR

T = TypeVar("T")
PlanT = TypeVar("PlanT")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PassParams(BaseModel):
    """Base of every pass's parameters: unknown keys are rejected, every field is described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class PassResult:
    """What a pass did: ``modified`` (truthful: computed from the graph), how the interface changed
    (``contract``, for the verifier) and what it changed, in lines a user reads (``notes``)."""

    modified: bool
    contract: IOContract = field(default_factory=IOContract)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Figures for the report (JSON values), under the step's ``details``."""


class Pass(Generic[PlanT]):
    """Base of passes. Subclasses set ``Params`` and implement ``run`` (and ``requires``, ``plan``).

    The protocol, in one place (:meth:`__call__`), with no state kept between calls:

    1. ``plan(model)`` works out what the pass will rewrite (default: ``None``, no plan) and raises
       :class:`PassPreconditionError` for what it cannot plan;
    2. ``requires(model, plan)`` checks the other preconditions;
    3. ``run(model, plan)`` edits ``model.graph`` in place.

    The plan is computed once per call and handed to both. ``requires`` and ``run`` may leave the
    ``plan`` parameter out (``requires(model)``, ``run(model)``: the signature of passes written
    before plans were handed over); the pass is then called without it. A pass that plans takes
    ``plan: PlanT | None = None`` and makes its own (:meth:`plan_of`) when called directly without one.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[PassParams]] = PassParams
    tolerance: ClassVar[Tolerance | None] = None
    """The pass's own numeric contract (None: exact comparison under the pipeline's tolerance),
    read through :meth:`default_tolerance`. It applies only where the user set no tolerance for the step."""

    edits_protobuf: ClassVar[bool] = False
    """The pass edits a model whose graph was never built on its protobuf (``ModelIR.proto_graph``,
    ``shell``) and builds no graph: the pipeline keeps no copy of the model for it."""

    verification_params: ClassVar[tuple[str, ...]] = ()
    """Params of a pass that checks its own work with onnxruntime (``rtol``, ``atol``, ``seed``,
    ``dims``), which the pipeline fills from the step's verification settings where the user set
    them and the step's params do not (the command line's ``--rtol``/``--atol`` win over the
    params too, as they do for the step): the pass's check then runs as the step's."""

    def __init__(self, params: PassParams | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(params, PassParams):
            if kwargs:
                params = params.model_copy(update=kwargs)
            self.params = self.Params.model_validate(params.model_dump())
        else:
            self.params = self.Params.model_validate({**dict(params or {}), **kwargs})

    def plan(self, model: ModelIR) -> PlanT | None:
        """What the pass will rewrite in ``model`` (None: the pass does not plan). Raise
        :class:`PassPreconditionError` for what the user can fix, listing what does exist."""
        return None

    def plan_of(self, model: ModelIR, plan: PlanT | None) -> PlanT:
        """``plan`` when the caller handed one over, else a new plan of ``model`` (``run(model)``
        called directly, or by a subclass written without the plan parameter)."""
        made = plan if plan is not None else self.plan(model)
        if made is None:  # pragma: no cover - a pass that plans returns a plan
            raise TypeError(f"{type(self).__name__}.plan returned None")
        return made

    def requires(self, model: ModelIR) -> None:
        """Raise :class:`PassPreconditionError` for what the user can fix (named tensors missing,
        unsupported opset), listing what does exist. A pass that plans may take the plan:
        ``requires(self, model, plan=None)``."""

    def run(self, model: ModelIR) -> PassResult:  # pragma: no cover - abstract
        """Edit ``model.graph`` in place. A pass that plans takes the plan: ``run(self, model, plan=None)``."""
        raise NotImplementedError

    def default_tolerance(self, model: ModelIR) -> Tolerance | None:
        """The pass's own tolerance for its step, the one channel a pass declares it through
        (default: the class attribute :attr:`tolerance`). ``model`` is the model as the pass left
        it, for a tolerance that depends on what the pass made (append-op: the output's dtype)."""
        return self.tolerance

    def __call__(
        self,
        model: ModelIR,
        context: Callable[[SurgeonError], str] | None = None,
        before_edit: Callable[[], None] | None = None,
    ) -> PassResult:
        """Plan, check the preconditions, call ``before_edit`` (the pipeline's reference run), then
        rewrite ``model`` with the same plan. A :class:`SurgeonError` keeps its class (and exit
        code); its message becomes ``context(err)`` (default: the pass's name, then the message)."""
        try:
            plan = self.plan(model)
            _call(self.requires, model, plan)
            if before_edit is not None:
                before_edit()
            result: PassResult = _call(self.run, model, plan)
        except SurgeonError as exc:
            raise with_message(exc, context(exc) if context else f"{self.name}: {exc}") from None
        return result

    def bound_sizes(self) -> Mapping[str, int]:
        """Sizes this pass binds symbolic dims of the inputs to (``symbol`` or ``input:axis`` ->
        size): the model after it accepts no other, so the verifier feeds the source at them."""
        return {}

    def to_step(self) -> dict[str, Any]:
        """This pass as a recipe step: ``{name: params}`` with defaults left out."""
        return {self.name: self.params.model_dump(mode="json", exclude_defaults=True)}

    @classmethod
    def summary(cls) -> str:
        """The docstring's first paragraph, on one line."""
        head = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
        return " ".join(head.split())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def _call(method: Callable[..., T], model: ModelIR, plan: Any) -> T:
    """``method(model, plan)``, or ``method(model)`` where it takes no plan (the older signature)."""
    return method(model, plan) if _takes_plan(method) else method(model)


_TAKES_PLAN: dict[Any, bool] = {}


def _takes_plan(method: Callable[..., Any]) -> bool:
    """Whether a bound ``requires``/``run`` accepts a second positional argument after the model
    (looked up once per function)."""
    key = getattr(method, "__func__", method)
    if key not in _TAKES_PLAN:
        params = list(inspect.signature(method).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        _TAKES_PLAN[key] = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
    return _TAKES_PLAN[key]


_REGISTRY: dict[str, type[Pass[Any]]] = {}
P = TypeVar("P", bound=type[Pass[Any]])


def register_pass(name: str) -> Callable[[P], P]:
    """Register a pass class under a kebab-case name. Duplicate names are rejected."""
    if not _NAME.match(name):
        raise ValueError(f"pass name '{name}' is not kebab-case")

    def deco(cls: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            other = _REGISTRY[name]
            raise ValueError(f"pass '{name}' is already registered by {other.__module__}.{other.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_pass(name: str) -> type[Pass[Any]]:
    """The pass class registered as ``name``; imports only its module."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    passes = catalog()
    if name in passes:
        _import(passes[name])
    if name not in _REGISTRY and any(e.third_party for e in passes.values()):
        for entry in passes.values():  # an entry point module may register passes of other names
            if entry.third_party:
                _import(entry)
    if name not in _REGISTRY and name not in passes:
        raise UsageError(f"unknown pass '{name}'{suggest(name, list(passes))} (see 'surgeon passes')")
    if name not in _REGISTRY:  # pragma: no cover - a module that does not register what it declares
        raise PassError(f"pass '{name}': module {passes[name].module} did not register it")
    return _REGISTRY[name]


def _import(entry: PassEntry) -> None:
    try:
        importlib.import_module(entry.module)
    except Exception as exc:
        if not entry.third_party:
            raise
        raise PassError(f"third-party pass '{entry.name}' ({entry.module}) failed to load: {exc}") from exc


def pass_names() -> list[str]:
    """Every pass name (built-in, third-party and registered in this process), importing nothing."""
    return sorted(set(catalog()) | set(_REGISTRY))


def registry() -> dict[str, type[Pass[Any]]]:
    """Every registered pass class, by name (imports every pass module: for tools and tests; the
    command line lists passes from :func:`catalog`)."""
    for entry in catalog().values():
        _import(entry)
    return dict(sorted(_REGISTRY.items()))


def with_message(exc: SurgeonError, message: str) -> SurgeonError:
    """A copy of ``exc`` (same class, exit code and fields) whose text is ``message``."""
    cls = type(exc)
    new = cls.__new__(cls, message)  # not copy.copy: it calls __init__ with args, and a subclass's
    new.__dict__.update(exc.__dict__)  # own __init__ (SessionLoadError(path, reason)) takes others
    new.args = (message,)
    if isinstance(new, RecipeError):
        new.problems = message.splitlines()
    return new

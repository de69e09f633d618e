"""The pass framework: typed params, explicit registration, results with an I/O contract.

Pass modules must not import onnx, onnxruntime or torch at module level (import them inside the
functions that use them) so ``surgeon passes`` and ``surgeon --help`` start fast.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from surgeon.contract import IOContract, Tolerance
from surgeon.errors import PassError, UsageError

if TYPE_CHECKING:
    from surgeon.model import ModelIR

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PassParams(BaseModel):
    """Base of every pass's parameters: unknown keys are rejected, every field is described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class PassResult:
    """What a pass did: ``modified`` (truthful) and how the interface changed (``contract``)."""

    modified: bool
    contract: IOContract = field(default_factory=IOContract)


class Pass:
    """Base class of passes. Subclasses set ``Params`` and implement ``run`` (and ``requires``)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[PassParams]] = PassParams
    tolerance: ClassVar[Tolerance | None] = None
    """The pass's own numeric contract (None: exact comparison under the pipeline's tolerance)."""

    def __init__(self, params: PassParams | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(params, PassParams):
            if kwargs:
                params = params.model_copy(update=kwargs)
            self.params = self.Params.model_validate(params.model_dump())
        else:
            self.params = self.Params.model_validate({**dict(params or {}), **kwargs})

    def requires(self, model: ModelIR) -> None:
        """Raise :class:`PassPreconditionError` for what the user can fix (named tensors missing,
        unsupported opset), listing what does exist."""

    def run(self, model: ModelIR) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_step(self) -> dict[str, Any]:
        """This pass as a recipe step: ``{name: params}`` with defaults left out."""
        return {self.name: self.params.model_dump(mode="json", exclude_defaults=True)}

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


_REGISTRY: dict[str, type[Pass]] = {}
_loaded = False
P = TypeVar("P", bound=type[Pass])


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


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    import surgeon.passes  # noqa: F401  (built-in passes register on import)

    for ep in entry_points(group="surgeon.passes"):
        try:
            ep.load()
        except Exception as exc:
            raise PassError(f"third-party pass '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


def registry() -> dict[str, type[Pass]]:
    """Every registered pass, by name (built-in ones and those from the ``surgeon.passes`` entry points)."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def get_pass(name: str) -> type[Pass]:
    passes = registry()
    if name not in passes:
        raise UsageError(f"unknown pass '{name}'{suggest(name, list(passes))} (see 'surgeon passes')")
    return passes[name]

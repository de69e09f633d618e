"""Verification settings: the recipe's ``verify:`` block and a step's own ``verify:`` keywords."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Device = Literal["auto", "cpu", "cuda"]

DEFAULT_SESSION_NODES = 20_000
"""``verify.default_session: auto`` runs the default-level check on graphs up to this many nodes
(main graph): onnxruntime's full optimization took 18 s on a 30 000-node chain and minutes on
100 000 nodes, against 2 s for a session with optimizations off."""


class VerifyConfig(BaseModel):
    """How every pass is checked against onnxruntime."""

    model_config = ConfigDict(extra="forbid")

    device: Device = Field("auto", description="auto: CUDA when it really loads, else CPU; cuda: CUDA or an error; cpu")
    mode: Literal["each", "end", "off", "proof"] = Field(
        "each",
        description="verify after each pass, once at the end, or not at all; proof: every step must be proved "
        "structurally (no onnxruntime session; a step that cannot be proved fails), for models too large to run",
    )
    prove: bool = Field(
        True,
        description="a step whose result is provably the same computation (renames, metadata, dead nodes, "
        "byte-identical weights merged) is verified by that structural proof, with no onnxruntime run; "
        "false: run every step",
    )
    rtol: float = Field(1e-4, ge=0, description="relative tolerance: |a-b| <= atol + rtol*|b|")
    atol: float = Field(1e-5, ge=0, description="absolute tolerance")
    seed: int = Field(0, description="seed of the random input data")
    dims: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="sizes for symbolic dims, by symbol ('batch: 2') or by 'input:axis' ('image:0: 2')",
    )
    default_dim: int = Field(
        1,
        ge=1,
        description=(
            "size of a symbolic dim nothing else gives a size (as Polygraphy does); the report lists every size chosen"
        ),
    )
    inputs: str | None = Field(None, description=".npz file of input data (names as the source model's inputs)")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="value range [low, high) of random data per input name"
    )
    probe_batch: int = Field(3, ge=2, description="batch size used to probe a batch axis made dynamic")
    default_session: bool | Literal["auto"] = Field(
        "auto",
        description="before writing, load and run the result once at onnxruntime's default optimization level, "
        "in a child process (it catches a model the optimizer crashes on); auto: for graphs up to "
        f"{DEFAULT_SESSION_NODES:,} nodes (the optimizer takes minutes on larger ones); true: always; false: never",
    )


class StepVerify(BaseModel):
    """Per-step overrides of the verification settings."""

    model_config = ConfigDict(extra="forbid")

    rtol: float | None = Field(None, ge=0, description="relative tolerance for this step")
    atol: float | None = Field(None, ge=0, description="absolute tolerance for this step")
    skip: bool = Field(False, description="do not verify after this step (the next check still covers it)")
    accept_unproved: bool | list[str] = Field(
        False,
        description="accept probes that prove nothing about axes the step makes dynamic "
        "(true, or the symbols accepted); by default such a probe fails the step",
    )

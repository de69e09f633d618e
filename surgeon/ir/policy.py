"""How an output model is written: the recipe's ``save:`` block."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SavePolicy(BaseModel):
    """How the output model is written."""

    model_config = ConfigDict(extra="forbid")

    external: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: external data when the source used it or the model would pass 2 GB; always / never force it",
    )
    threshold: int = Field(1024, ge=0, description="tensors of at least this many bytes go to the external data file")
    location: str | None = Field(
        None, description="external data file name, relative to the output (default: '<output file name>.data')"
    )
    one_file_per_tensor: bool = Field(False, description="write each external tensor to its own file")
    share_weights: bool = Field(
        False,
        description="an output written next to its source references the source's weights file "
        "instead of copying it (never for a weight a pass changed)",
    )
    align: int = Field(4096, ge=1, description="alignment of tensors of 1 MiB or more in the data file (for mmap)")

"""Set model-level metadata: producer, model version, domain, doc string, metadata_props."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR

RESERVED = "surgeon."


@register_pass("set-metadata")
class SetMetadata(Pass):
    """Set the producer, model version, domain, doc string and metadata_props of the model.

    Unset fields stay as they are. ``metadata_props`` entries are added or overwritten;
    ``remove_props`` deletes keys (each must exist). Keys starting with ``surgeon.`` are reserved
    for the provenance surgeon writes when it saves.

    Weights: reads no weights.

    Contract: same interface, outputs exact.
    """

    edits_protobuf = True

    class Params(PassParams):
        producer_name: str | None = Field(None, description="producer_name of the model")
        producer_version: str | None = Field(None, description="producer_version of the model")
        model_version: int | None = Field(None, ge=0, description="model_version (an integer)")
        domain: str | None = Field(None, description="model domain, reverse-DNS style (com.example.models)")
        doc_string: str | None = Field(None, description="model doc string")
        metadata_props: dict[str, str] = Field(
            default_factory=dict, description="metadata_props entries to add or overwrite"
        )
        remove_props: list[str] = Field(default_factory=list, description="metadata_props keys to delete")

    params: Params

    def requires(self, model: ModelIR) -> None:
        for key in list(self.params.metadata_props) + self.params.remove_props:
            if key.startswith(RESERVED):
                field = "metadata_props" if key in self.params.metadata_props else "remove_props"
                raise PassPreconditionError(
                    f"metadata key '{key}' is reserved for surgeon's provenance", field=(field, key)
                )
        existing = [p.key for p in model.shell.metadata_props]
        for key in self.params.remove_props:
            if key not in existing:
                raise PassPreconditionError(
                    f"no metadata_props key '{key}' to remove; the model has: {', '.join(existing) or '(none)'}",
                    field=("remove_props", key),
                )

    def run(self, model: ModelIR) -> PassResult:
        shell = model.shell
        before = shell.SerializeToString()
        notes = []
        for name in ("producer_name", "producer_version", "model_version", "domain", "doc_string"):
            value = getattr(self.params, name)
            if value is not None and getattr(shell, name) != value:
                notes.append(f"{name}: {getattr(shell, name)!r} -> {value!r}")
                setattr(shell, name, value)
        props = {p.key: p.value for p in shell.metadata_props}
        for key in self.params.remove_props:
            if props.pop(key, None) is not None:
                notes.append(f"removed metadata_props['{key}']")
        for key, value in self.params.metadata_props.items():
            if props.get(key) != value:
                notes.append(f"metadata_props['{key}'] = {value!r}")
                props[key] = value
        del shell.metadata_props[:]
        for key, value in props.items():
            shell.metadata_props.add(key=key, value=value)
        changed = shell.SerializeToString() != before
        return PassResult(changed, notes=notes if changed else [])

"""The in-memory side: :class:`ModelIR`, the onnx-graphsurgeon graph passes edit, together with the
parts of the model onnx-graphsurgeon's round trip drops (model and node ``metadata_props``, doc
strings, functions, training info), which are carried across unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import ModelError, short_error
from surgeon.ir.external import check_external_data, is_external, tensor_values
from surgeon.ir.model import Model
from surgeon.ir.walk import all_value_infos, copy_fields, gs_subgraphs, iter_graphs, iter_proto_graphs, node_subgraphs

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

# --- the IR -------------------------------------------------------------------------------------

_NodeMeta = tuple[str, list[tuple[str, str]], list[Any]]
"""doc string, metadata_props, attributes onnx-graphsurgeon cannot carry (TypeProto ones)."""
_UNCARRIED_ATTRS = (13, 14)  # AttributeProto.TYPE_PROTO, TYPE_PROTOS


class _Built:
    """A field of :class:`ModelIR` derived from the graph: reading or setting it builds the graph
    first (a lazily imported model has none until a pass asks)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.private = "_" + name

    def __get__(self, ir: Any, owner: type | None = None) -> Any:
        if ir is None:
            return self
        ir._build()
        return ir.__dict__[self.private]

    def __set__(self, ir: Any, value: Any) -> None:
        ir.__dict__[self.private] = value


class ModelIR:
    """The graph passes edit (``graph``) and what the round trip carries across untouched.

    A model read with ``lazy=True`` (:meth:`from_model`) has no onnx-graphsurgeon graph until a pass
    reads :attr:`graph` (or a field derived from it): until then it is the protobuf ``proto_graph``,
    which passes that touch only the interface and metadata edit directly (:attr:`built` is
    False). The graph is imported at most once, and exported once per :meth:`to_proto`.
    """

    node_meta = _Built()
    default_inputs = _Built()
    """Graph inputs that have an initializer (a default value the caller may override).
    onnx-graphsurgeon imports them as constants; they are listed as inputs again on export.
    A pass may add one (promote an initializer with its default kept)."""
    input_order = _Built()
    orphans = _Built()
    """Initializers no node or output uses. onnx-graphsurgeon's export drops them; they are written
    back unchanged unless a pass (cleanup) clears this list."""
    exotic_types = _Built()
    """Types onnx-graphsurgeon cannot export (optional, map, a sequence of anything but tensors:
    a classifier's ``seq(map(int64, float))``) by tensor name: they are exported typeless and
    their types put back from here."""
    exotic_tensors = _Built()
    """The same types by tensor identity (``id(variable) -> (variable, type)``), so a tensor a
    pass renames (rename-io) keeps its type under its new name."""

    def __init__(
        self,
        graph: gs.Graph | None,
        shell: onnx.ModelProto,
        base_dir: Path | None = None,
        source: Model | None = None,
        proto_graph: onnx.GraphProto | None = None,
    ) -> None:
        self._graph = graph
        self.shell = shell
        """The source model without its graph: ir_version, producer, metadata, functions..."""
        self.base_dir = base_dir
        self.source = source
        self.proto_graph = proto_graph
        """The graph as a protobuf while no onnx-graphsurgeon graph is built (None once it is)."""
        self._holder: onnx.ModelProto | None = None
        """The model message ``proto_graph`` lives in (a lazy model's working copy), handed over
        whole by ``to_model(final=True)``: the graph is not copied again for the save."""
        self.source_docs = True
        """Carry the source graph's doc string and its inputs'/outputs' doc strings (strip-doc clears it)."""
        self.source_metadata = True
        """Carry the source graph's and its values' metadata_props (strip-doc with metadata clears it)."""
        self.node_meta = {}  # dict[int, tuple[node, _NodeMeta]]
        self.default_inputs = {}  # dict[str, onnx.ValueInfoProto]
        self.input_order = []  # list[str]
        self.orphans = []  # list[onnx.TensorProto]
        self.exotic_types = {}  # dict[str, onnx.TypeProto]
        self.exotic_tensors = {}  # dict[int, tuple[Any, onnx.TypeProto]]

    @property
    def built(self) -> bool:
        """Whether the onnx-graphsurgeon graph exists (False: a lazy model still on its protobuf)."""
        return self._graph is not None

    @property
    def graph(self) -> gs.Graph:
        self._build()
        assert self._graph is not None
        return self._graph

    @graph.setter
    def graph(self, value: gs.Graph) -> None:
        self._graph = value
        self.proto_graph = self._holder = None

    def node_count(self) -> int:
        """Nodes of the main graph, from the protobuf while no graph is built."""
        return len(self._graph.nodes) if self._graph is not None else len(self.proto_graph.node)  # type: ignore[union-attr]

    def _build(self) -> None:
        if self._graph is not None or self.proto_graph is None:
            return
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self.shell)
        proto.graph.CopyFrom(self.proto_graph)
        self.proto_graph = self._holder = None
        files = self.source.data_files if self.source is not None else []
        built = ModelIR.from_model(Model(proto, base_dir=self.base_dir, data_files=files))
        for f in ("node_meta", "default_inputs", "input_order", "orphans", "exotic_types", "exotic_tensors"):
            self.__dict__["_" + f] = built.__dict__["_" + f]
        self._graph = built._graph

    @classmethod
    def from_model(cls, model: Model, lazy: bool = False) -> ModelIR:
        """The model to edit. ``lazy``: no graph is imported until a pass needs one (the protobuf is
        copied: ``model`` is never edited)."""
        import onnx

        if lazy:
            shell = _without_graph(model.proto)
            holder = onnx.ModelProto()
            holder.graph.CopyFrom(model.proto.graph)
            ir = cls(None, shell, model.base_dir, model, proto_graph=holder.graph)
            ir._holder = holder
            return ir
        import onnx_graphsurgeon as gs

        quiet_graphsurgeon()
        try:
            with _io_duplicates_hidden(model.proto.graph):
                graph = gs.import_onnx(model.proto)
        except Exception as exc:  # onnx-graphsurgeon raises plain exceptions on bad graphs
            raise ModelError(f"{model.name}: cannot import the graph ({short_error(exc)})") from None
        shell = onnx.ModelProto()
        shell.CopyFrom(_without_graph(model.proto))
        ir = cls(graph, shell, model.base_dir, model)
        if model.uses_external_data:
            _bind_external(graph, model.base_dir)
        _collect_node_meta(model.proto.graph, graph, ir.node_meta)
        used = {name for g in iter_graphs(graph) for name in g.tensors()}  # If/Loop bodies read weights too
        ir.orphans = [t for t in model.proto.graph.initializer if t.name not in used]
        inits = {t.name for t in model.proto.graph.initializer}
        ir.default_inputs = {vi.name: vi for vi in model.proto.graph.input if vi.name in inits}
        ir.input_order = [vi.name for vi in model.proto.graph.input]
        for vi in all_value_infos(model.proto.graph):
            if not graphsurgeon_carries(vi.type):
                ir.exotic_types[vi.name] = vi.type
        if ir.exotic_types:
            for g in iter_graphs(graph):
                for t in g.tensors().values():
                    if t.name in ir.exotic_types:
                        ir.exotic_tensors[id(t)] = (t, ir.exotic_types[t.name])
        return ir

    @property
    def opset(self) -> int:
        """The default-domain opset the graph is written against."""
        if self._graph is None:
            return next((int(o.version) for o in self.shell.opset_import if o.domain in ("", "ai.onnx")), 1)
        return int(self.graph.opset)

    def values(self, tensor: gs.Constant) -> np.ndarray:
        """Values of a constant, reading only its own bytes when they are stored externally."""
        import onnx_graphsurgeon as gs

        lazy = tensor._values
        if isinstance(lazy, gs.ir.tensor.LazyValues):
            return tensor_values(lazy.tensor, self.base_dir)
        return tensor.values

    def to_proto(self, final: bool = False) -> onnx.ModelProto:
        """The model as it is now, a message of its own. ``final``: the last call (nothing edits this
        model after it): a lazy model that was never built hands over its working message, the
        graph not copied (a 100 000-node graph is tens of MB)."""
        import onnx
        import onnx_graphsurgeon as gs

        if self._graph is None and self.proto_graph is not None:  # lazy, never built: the protobuf
            if final and self._holder is not None:
                out, self._holder = self._synced(), None
                return out
            out = onnx.ModelProto()
            out.CopyFrom(self.shell)
            out.graph.CopyFrom(self.proto_graph)
            return out

        hidden = []
        exotic: dict[str, onnx.TypeProto] = {}
        if self.exotic_types:
            for g in iter_graphs(self.graph):
                for t in g.tensors().values():
                    tracked = self.exotic_tensors.get(id(t))
                    tp = tracked[1] if tracked is not None and tracked[0] is t else self.exotic_types.get(t.name)
                    if tp is None or not isinstance(t, gs.Variable):
                        continue
                    exotic[t.name] = tp
                    if t.dtype is not None:
                        hidden.append((t, t.dtype))
                        t.dtype = None
        try:
            proto = gs.export_onnx(self.graph, do_type_check=False)
        except Exception as exc:
            raise ModelError(f"cannot export the edited graph ({short_error(exc)})") from None
        finally:
            for t, dtype in hidden:
                t.dtype = dtype
        if exotic:
            for vi in all_value_infos(proto.graph):
                if vi.name in exotic and not vi.type.WhichOneof("value"):
                    vi.type.CopyFrom(exotic[vi.name])
        out = onnx.ModelProto()
        out.CopyFrom(self.shell)
        out.graph.CopyFrom(proto.graph)
        if self.source is not None:
            _hoist_outer_weights(out.graph, {t.name for t in self.source.proto.graph.initializer})
        # opsets: keep the source's, take versions/domains the graph now declares
        versions = {o.domain: o.version for o in self.shell.opset_import}
        had_default = "" in versions or "ai.onnx" in versions
        versions.update({o.domain: o.version for o in proto.opset_import})
        uses_default = any(n.domain in ("", "ai.onnx") for n in out.graph.node)
        if had_default or uses_default:
            versions[""] = self.opset
        else:
            versions.pop("", None)
        del out.opset_import[:]
        for domain, version in versions.items():
            out.opset_import.add(domain=domain, version=version)
        _restore_node_meta(out.graph, self.graph, self.node_meta)
        present = {t.name for t in out.graph.initializer} | {o for n in out.graph.node for o in n.output}
        present |= {v.name for v in out.graph.input}
        out.graph.initializer.extend(t for t in self.orphans if t.name not in present)
        self._restore_default_inputs(out.graph)
        if out.ir_version < 4:  # IR 3 lists every initializer as a graph input
            listed = {vi.name for vi in out.graph.input}
            for t in out.graph.initializer:
                if t.name not in listed:
                    out.graph.input.append(_value_info_of(t))
        if self.source is not None:
            src = self.source.proto.graph
            out.graph.doc_string = src.doc_string if self.source_docs else ""
            if hasattr(src, "metadata_props") and self.source_metadata:
                del out.graph.metadata_props[:]
                out.graph.metadata_props.extend(src.metadata_props)
            names = {t.name for t in out.graph.initializer} | {v.name for v in out.graph.value_info}
            names |= {v.name for v in out.graph.input} | {v.name for v in out.graph.output}
            names |= {o for n in out.graph.node for o in n.output}
            for ann in src.quantization_annotation:
                if ann.tensor_name in names:
                    out.graph.quantization_annotation.add().CopyFrom(ann)
            _restore_io_docs(out.graph, src, self.source_docs, self.source_metadata)
        return out

    def _restore_default_inputs(self, graph: onnx.GraphProto) -> None:
        """List initializer-backed inputs again, in the source's input order."""
        inits = {t.name: t for t in graph.initializer}
        current = {vi.name: vi for vi in graph.input}
        defaults = {n: vi for n, vi in self.default_inputs.items() if n in inits and n not in current}
        if not defaults:
            return
        # defaults go back to their source slots; the graph's own inputs keep their order (a renamed
        # or added input is not in the source's order, and must not move behind the defaults)
        own = iter(current)
        ordered = [
            n if n in defaults else next(own, None)
            for n in self.input_order
            if n in defaults or n not in self.default_inputs
        ]
        ordered = [n for n in ordered if n is not None] + list(own)
        ordered += [n for n in defaults if n not in ordered]
        copies = []
        for n in ordered:
            vi = current.get(n) or defaults[n]
            c = type(vi)()
            c.CopyFrom(vi)
            if n in defaults:  # declared as the initializer is now (a pass may have retyped it)
                _declare_as(c, inits[n])
            copies.append(c)
        del graph.input[:]
        graph.input.extend(copies)

    def replace_graph(self, proto: onnx.ModelProto) -> None:
        """Make ``proto``'s graph this model's graph, for passes that edit through ModelProto-level
        tools (onnxsim, the version converter): everything derived from a graph (node doc strings
        and metadata, inputs with defaults, unused initializers...) is derived again from
        ``proto``; opsets follow it; the shell (producer, metadata) and the source stay."""
        self.adopt(ModelIR.from_model(Model(proto, base_dir=self.base_dir)))
        del self.shell.opset_import[:]
        self.shell.opset_import.extend(proto.opset_import)

    def take(self, proto: onnx.ModelProto) -> None:
        """Make ``proto``, an export of this model as it now stands (what :meth:`to_proto` just
        gave, a pass's last candidate), this model's working message, owned from now on: the built
        graph goes, so the next export is the message as it is (no second export); a pass that
        needs the graph imports it again. Opsets follow ``proto``; the shell and the source stay."""
        self._graph = None
        self._holder, self.proto_graph = proto, proto.graph
        del self.shell.opset_import[:]
        self.shell.opset_import.extend(proto.opset_import)

    def adopt(self, other: ModelIR) -> None:
        """Make ``other``'s graph (an edited import of this model's own export, with the same base
        folder and opsets) this model's graph, with what was derived from it; the shell and the
        source stay."""
        self.graph = other.graph
        for f in ("node_meta", "default_inputs", "input_order", "orphans", "exotic_types", "exotic_tensors"):
            setattr(self, f, getattr(other, f))

    def _synced(self) -> onnx.ModelProto:
        """The working message of a lazy model, its model fields made the shell's (the graph kept)."""
        out = self._holder
        assert out is not None
        for f in out.DESCRIPTOR.fields:
            if f.name != "graph":
                out.ClearField(f.name)
        out.MergeFrom(self.shell)  # the shell has no graph: the working one stays
        return out

    def live_model(self) -> Model | None:
        """The model as it is now, *not* a copy: its message is the one passes edit, to be read
        before the next edit and never kept past it (a structural proof reads it; the graph is not
        copied). None when there is no such message (the graph was built): :meth:`to_model`."""
        if self._graph is not None or self._holder is None:
            return None
        return self._model(self._synced())

    def to_model(self, final: bool = False) -> Model:
        """The model as it is now (``final``: see :meth:`to_proto`)."""
        return self._model(self.to_proto(final))

    def _model(self, proto: onnx.ModelProto) -> Model:
        src = self.source
        external = bool(src and (src.uses_external_data or src.source_external))
        # a protobuf edited by the passes that work on it (never built) holds the external
        # references its source held, and no others: none to look for when the source had none
        unbuilt = self._graph is None and src is not None and not external
        return Model(
            proto,
            path=None,
            base_dir=self.base_dir,
            data_files=[] if unbuilt else check_external_data(proto, self.base_dir, src.name if src else "<model>"),
            source_external=external,
        )


@contextlib.contextmanager
def _io_duplicates_hidden(graph: onnx.GraphProto) -> Iterator[None]:
    """Some exporters list a graph input or output again in ``value_info``, often without its
    shape; onnx-graphsurgeon's importer then keeps that copy's (missing) type, and the export
    would declare the output shapeless. The declaration in the graph's input/output list is
    the one that counts: hide the duplicates while importing (they are put back after, so the
    source proto is unchanged; the export writes no duplicate)."""
    saved: list[tuple[onnx.GraphProto, list[onnx.ValueInfoProto]]] = []
    try:
        for g in iter_proto_graphs(graph):
            io = {vi.name for vi in g.input} | {vi.name for vi in g.output}
            if any(vi.name in io for vi in g.value_info):
                entries = [type(vi)() for vi in g.value_info]
                for copy, vi in zip(entries, g.value_info):
                    copy.CopyFrom(vi)
                saved.append((g, entries))
                kept = [vi for vi in entries if vi.name not in io]
                del g.value_info[:]
                g.value_info.extend(kept)
        yield
    finally:
        for g, entries in saved:
            del g.value_info[:]
            g.value_info.extend(entries)


def _bind_external(graph: gs.Graph, base_dir: Path | None) -> None:
    """Make ``constant.values`` of external tensors read from the model's folder, not the cwd."""
    import onnx_graphsurgeon as gs

    cls = _folder_lazy_values()
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            lazy: Any = getattr(t, "_values", None)
            if type(lazy) is gs.ir.tensor.LazyValues and is_external(lazy.tensor):
                bound = object.__new__(cls)
                bound.__dict__.update(lazy.__dict__)
                bound.base_dir = base_dir
                t._values = bound
                t.data_location = None  # else new values a pass sets export as "external" with no file


@functools.cache
def _folder_lazy_values() -> type[Any]:
    import onnx_graphsurgeon as gs

    class FolderLazyValues(gs.ir.tensor.LazyValues):  # type: ignore[misc]
        """Lazy values of an external tensor, read (only its bytes) from the model's folder."""

        base_dir: Path | None = None

        def load(self) -> np.ndarray:
            return tensor_values(self.tensor, self.base_dir)

    return FolderLazyValues


def _hoist_outer_weights(graph: onnx.GraphProto, outer: set[str]) -> None:
    """onnx-graphsurgeon writes a main-graph weight that an If/Loop body reads into that body as
    an initializer of its own (once per body that reads it, beside the main graph's copy): move
    such weights back to the main graph, one copy each, where the bodies read them as before."""
    top = {t.name for t in graph.initializer}
    for g in iter_proto_graphs(graph):
        if g is graph or not g.initializer:
            continue
        kept = []
        for t in g.initializer:
            if t.name not in outer:
                kept.append(t)
            elif t.name not in top:
                graph.initializer.add().CopyFrom(t)
                top.add(t.name)
        if len(kept) != len(g.initializer):
            local = [type(t)() for t in kept]
            for c, t in zip(local, kept):
                c.CopyFrom(t)
            del g.initializer[:]
            g.initializer.extend(local)


def graphsurgeon_carries(tp: onnx.TypeProto) -> bool:
    """Whether onnx-graphsurgeon's round trip keeps this type: a tensor, a sparse tensor, a
    sequence of tensors, or no type at all. Optional and map types, and sequences of them, it
    writes back as tensors (or sequences of tensors) of an undefined element type."""
    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        return tp.sequence_type.elem_type.WhichOneof("value") in (None, "tensor_type")
    return kind in (None, "tensor_type", "sparse_tensor_type")


def _declare_as(vi: onnx.ValueInfoProto, tensor: onnx.TensorProto) -> None:
    """Make an input's declared type the initializer's: its element type, and its shape where the
    declared one disagrees (no shape, or symbolic dims of the right rank, stay: the caller may feed
    other sizes)."""
    tt = vi.type.tensor_type
    tt.elem_type = tensor.data_type
    dims = list(tt.shape.dim)
    if not tt.HasField("shape"):
        return
    if len(dims) != len(tensor.dims) or any(
        d.HasField("dim_value") and d.dim_value != n for d, n in zip(dims, tensor.dims)
    ):
        del tt.shape.dim[:]
        for n in tensor.dims:
            tt.shape.dim.add().dim_value = n


def _value_info_of(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def quiet_graphsurgeon() -> None:
    """onnx-graphsurgeon logs warnings to stdout; surgeon reports what matters itself."""
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.ERROR


def _without_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    shell = onnx.ModelProto()
    copy_fields(proto, shell, skip=("graph",))
    return shell


def _collect_node_meta(gproto: onnx.GraphProto, graph: gs.Graph, meta: dict[int, tuple[Any, _NodeMeta]]) -> None:
    """Remember each node's doc string and metadata_props by node identity (the importer keeps
    node order, so proto and IR nodes pair up one to one)."""
    for nproto, node in zip(gproto.node, graph.nodes):
        props = [(p.key, p.value) for p in getattr(nproto, "metadata_props", [])]
        extra = [a for a in nproto.attribute if a.type in _UNCARRIED_ATTRS]
        if nproto.doc_string or props or extra:
            meta[id(node)] = (node, (nproto.doc_string, props, extra))
        for sub_proto, sub in zip(node_subgraphs(nproto), gs_subgraphs(node)):
            _collect_node_meta(sub_proto, sub, meta)


def _restore_node_meta(gproto: onnx.GraphProto, graph: gs.Graph, meta: dict[int, tuple[Any, _NodeMeta]]) -> None:
    for nproto, node in zip(gproto.node, graph.nodes):
        entry = meta.get(id(node))
        if entry is not None and entry[0] is node:
            doc, props, extra = entry[1]
            nproto.doc_string = doc
            for key, value in props:
                nproto.metadata_props.add(key=key, value=value)
            have = {a.name for a in nproto.attribute}
            nproto.attribute.extend(a for a in extra if a.name not in have)
        for sub_proto, sub in zip(node_subgraphs(nproto), gs_subgraphs(node)):
            _restore_node_meta(sub_proto, sub, meta)


def _restore_io_docs(out: onnx.GraphProto, src: onnx.GraphProto, docs: bool, metadata: bool) -> None:
    """Value-info doc strings and metadata for tensors that kept their name."""
    by_name = {}
    for vi in list(src.input) + list(src.output) + list(src.value_info):
        if vi.doc_string or len(getattr(vi, "metadata_props", [])):
            by_name[vi.name] = vi
    if not by_name:
        return
    for vi in list(out.input) + list(out.output) + list(out.value_info):
        old = by_name.get(vi.name)
        if old is not None:
            if docs:
                vi.doc_string = old.doc_string
            if metadata and hasattr(vi, "metadata_props"):
                del vi.metadata_props[:]
                vi.metadata_props.extend(old.metadata_props)

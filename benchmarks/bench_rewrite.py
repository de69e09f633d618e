"""The rewrite pass with its per-match check against the same rules in the onnxscript rewriter
without any check, on a transformer with many matches, exported in the benchmark (TorchScript,
opset 17, converted to opset 23): hand-written layer norms, MatMul + Add projections on 2-D
activations, scaled_dot_product_attention and erf GELU in every layer.

Target: the rewrite (safety checks, one run of the model for the activations, the replacements
checked) in at most 3x the onnxscript rewriter's time, with the same node counts::

    python benchmarks/bench_rewrite.py --layers 24
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from typing import Any

RULES = ["fuse-layer-norm", "fuse-gemm", "fuse-attention", "fuse-gelu"]
TARGET = 3.0


def build(layers: int, dim: int, heads: int, seq: int) -> Any:
    import onnx
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.rand(dim) + 0.5)
            self.b = nn.Parameter(torch.rand(dim) * 0.1)

        def forward(self, x: Any) -> Any:
            d = x - x.mean(-1, keepdim=True)
            return d / torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w + self.b

    class Lin(nn.Module):
        def __init__(self, i: int, o: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(i, o) / i**0.5)
            self.b = nn.Parameter(torch.randn(o) * 0.1)

        def forward(self, x: Any) -> Any:
            return x @ self.w + self.b

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = LN(), LN()
            self.q, self.k, self.v, self.o = (Lin(dim, dim) for _ in range(4))
            self.up, self.down = Lin(dim, 4 * dim), Lin(4 * dim, dim)

        def split(self, t: Any) -> Any:
            return t.reshape(seq, heads, dim // heads).transpose(0, 1).unsqueeze(0)

        def forward(self, x: Any) -> Any:
            h = self.ln1(x)
            a = F.scaled_dot_product_attention(self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h)))
            x = x + self.o(a.squeeze(0).transpose(0, 1).reshape(seq, dim))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    model = nn.Sequential(*(Block() for _ in range(layers))).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(seq, dim),), f, dynamo=False, opset_version=17)
    proto = onnx.load_from_string(f.getvalue())
    proto.ir_version = min(proto.ir_version, 10)
    return onnx.version_converter.convert_version(proto, 23)


def ours(proto: Any) -> tuple[float, int, list[str]]:
    from surgeon.ir.adapter import ModelIR
    from surgeon.ir.model import Model
    from surgeon.pass_api import get_pass

    t0 = time.perf_counter()
    ir = ModelIR.from_model(Model(proto))
    result = get_pass("rewrite")({"rules": RULES})(ir)
    out = ir.to_proto()
    return time.perf_counter() - t0, len(out.graph.node), [n for n in result.notes if not n.startswith(" ")]


def onnxscript_rules() -> list[Any]:
    """The same rules (patterns and replacements) as onnxscript RewriteRules, without conditions."""
    from onnxscript.rewriter import pattern

    from surgeon.passes._rewrite_rules import builtin, proto_attribute_value

    out = []
    for name in RULES:
        rule = builtin(name)
        rep = rule.replacement

        def replace(op: Any, rep: Any = rep, **bound: Any) -> Any:
            values = {vi.name: bound[vi.name] for vi in rep.input}
            for node in rep.node:
                attrs = {}
                for a in node.attribute:
                    if a.ref_attr_name:
                        attrs[a.name] = float(bound[a.ref_attr_name].const_value.numpy().reshape(-1)[0])
                    else:
                        attrs[a.name] = proto_attribute_value(a)
                ins = [values[i] for i in node.input]
                values[node.output[0]] = getattr(op, node.op_type)(*ins, **attrs)
            return [values[o.name] for o in rep.output]

        for _, variants in rule.compiled:
            out += [pattern.RewriteRule(v, replace, name=name) for v in variants]
    return out


def theirs(proto: Any) -> tuple[float, int]:
    import onnx_ir
    from onnxscript import optimizer
    from onnxscript.rewriter import pattern

    rules = onnxscript_rules()
    t0 = time.perf_counter()
    model = onnx_ir.serde.deserialize_model(proto)
    pattern.RewriteRuleSet(rules).apply_to_model(model)
    optimizer.remove_unused_nodes(model)  # the constants the matches used (the rewrite pass drops them too)
    out = onnx_ir.serde.serialize_model(model)
    return time.perf_counter() - t0, len(out.graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    proto = build(args.layers, args.dim, args.heads, args.seq)
    before = len(proto.graph.node)
    small = build(1, args.dim, args.heads, args.seq)
    theirs(small), ours(small)  # warm-up: imports and first sessions out of the timings
    t_theirs, n_theirs = theirs(proto)
    t_ours, n_ours, notes = ours(proto)
    ratio = t_ours / t_theirs
    print(f"model: {args.layers} layers, {before} nodes")
    for line in notes:
        print(f"  {line}")
    print(f"{'':34} {'seconds':>8} {'nodes':>6}")
    print(f"{'onnxscript rewriter (no check)':34} {t_theirs:8.2f} {n_theirs:6d}")
    print(f"{'surgeon rewrite (per-match check)':34} {t_ours:8.2f} {n_ours:6d}")
    print(f"ratio {ratio:.2f}x (target <= {TARGET:g}x); node counts {'equal' if n_ours == n_theirs else 'DIFFER'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"nodes_before": before, "ours": [t_ours, n_ours], "onnxscript": [t_theirs, n_theirs]}, f)


if __name__ == "__main__":
    main()

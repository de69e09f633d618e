"""Verification with onnxruntime: the model before and after run on the same inputs, compared
through the I/O contract of every step in between."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import ModelError, SurgeonError, UsageError, VerificationError
from surgeon.verify.compare import OutputCheck, StepCheck, Tolerance, Verdict, compare
from surgeon.verify.contract import IOContract
from surgeon.verify.dims import Sizes, choose_sizes, search_sizes, sizes_of_data, source_failure_tail
from surgeon.verify.domains import Domain, describe, integer_domains
from surgeon.verify.feeds import load_npz, make_feed
from surgeon.verify.interface import check_interface, made_static
from surgeon.verify.localize import Divergence, localize
from surgeon.verify.probes import run_probes
from surgeon.verify.runtime import Runtime, SessionLoadError, run_model
from surgeon.verify.specs import InputSpec, graph_inputs

if TYPE_CHECKING:
    import numpy as np

    from surgeon.ir.model import Model
    from surgeon.verify.config import VerifyConfig


# --- the verifier ------------------------------------------------------------------------------


class Verifier:
    """Holds the source model's feed and reference outputs (computed once) and checks candidates
    through the list of contracts between the source and them."""

    def __init__(
        self,
        source: Model,
        config: VerifyConfig,
        base_dir: Path | None = None,
        hints: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        """``hints``: sizes steps of the pipeline will fix, by symbol or ``input:axis`` (``fix-dims``),
        used for the source's symbols after ``verify.dims``."""
        self._snapshot: tempfile.TemporaryDirectory[str] | None = None
        if source.path is None and not source.uses_external_data:
            # an in-memory source is saved once, before any pass can touch shared protos
            from surgeon.ir.model import Model as _Model
            from surgeon.ir.save import save

            self._snapshot = tempfile.TemporaryDirectory(prefix="surgeon-source-")
            path = Path(self._snapshot.name) / "source.onnx"
            save(source, path)
            source = _Model(source.proto, path=path, base_dir=path.parent)
        self.source = source
        self.config = config
        self.runtime = Runtime(config.device)
        self.specs = graph_inputs(source.proto)
        self._domains: dict[str, Domain] = {}
        self.values: list[str] = []
        """How integer inputs' values were chosen ("ids in [0, 30) (indexes 'emb' (30 rows))")."""
        if config.inputs:
            path = Path(config.inputs)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            self.feed = load_npz(path, self.specs)
            self.sizes = sizes_of_data(self.specs, self.feed)
        else:
            self.sizes = choose_sizes(self.specs, config, hints=hints)
            domains = integer_domains(source.proto, self.specs)
            self.values = [f"{k} in {describe(r)} ({why})" for k, (r, why) in domains.items() if k not in config.ranges]
            self._domains = {k: r for k, (r, _) in domains.items()}
            try:
                self.feed = make_feed(self.specs, config, self.sizes.dims(), domains=self._domains)
            except UsageError as exc:
                raise UsageError(f"{source.name}: {exc}") from None
        self._reference: dict[str, np.ndarray] | None = None
        self.last: tuple[Model, dict[str, np.ndarray], Sizes] | None = None
        self.chain: dict[int, dict[str, np.ndarray]] = {}
        """The last check's feed after each number of contracts (for localization)."""
        """The last candidate checked, the feed it got and its sizes (probes start from them)."""

    @property
    def device_line(self) -> str:
        return f"{self.runtime.used} ({self.runtime.reason})" if self.runtime.used else "not run"

    def reference(self) -> dict[str, np.ndarray]:
        """The source's outputs on the feed. When the source itself fails on it, that is said
        (exit 3), with the sizes used and the keys that choose other data."""
        if self._reference is None:
            try:
                self._reference = run_model(self.runtime, self.source, [self.feed])[0]
            except VerificationError as exc:
                if self.config.inputs:
                    raise ModelError(f"the source model fails on verify.inputs: {exc}; check verify.inputs") from None
                found = search_sizes(self.specs, self.sizes, self._attempt)  # sizes it runs at (dims.py)
                if found is None:
                    tail = source_failure_tail(str(exc), self.sizes)
                    raise ModelError(f"the source model fails on the generated inputs: {exc}; {tail}") from None
                self.sizes, (self.feed, self._reference) = found
        return self._reference

    def _attempt(self, dims: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """The source's feed and outputs at ``dims``, or None when it fails there (the size search)."""
        try:
            feed = make_feed(self.specs, self.config, dims, domains=self._domains)
            return feed, run_model(self.runtime, self.source, [feed])[0]
        except (VerificationError, UsageError):
            return None

    def sizes_for(
        self,
        specs: Sequence[InputSpec],
        contracts: Sequence[IOContract],
        feed: Mapping[str, np.ndarray] | None = None,
        exact: bool = False,
    ) -> Sizes:
        """Sizes for inputs after ``contracts``: verify.dims, what ``feed`` (their data at the traced
        sizes) has, sizes passes traced, the source's sizes for shared symbols, then the default.
        ``exact``: ``feed`` is the data the model gets, so its sizes win over verify.dims."""
        traced: dict[str, int] = {}
        for c in contracts:
            traced.update(c.traced_dims)
        return choose_sizes(
            specs, self.config, feed, "traced", inherited=self.sizes, traced=traced, observed_first=exact
        )

    def domains_for(self, candidate: Model, later: Sequence[IOContract]) -> dict[str, Domain]:
        specs = graph_inputs(candidate.proto)
        return {_unrename(k, later, "in"): r for k, (r, _) in integer_domains(candidate.proto, specs).items()}

    def run_source(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return run_model(self.runtime, self.source, feeds)

    def intermediates(self, contract: IOContract, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Values of the tensors ``contract`` needs from inside the model before its step."""
        inter = contract.intermediates
        if inter is None:
            return None
        out = run_model(self.runtime, inter.model, [feed])[0]
        return {name: out[name] for name in inter.names}

    def replay(
        self, contracts: Sequence[IOContract], chains: Sequence[Sequence[Mapping[str, np.ndarray]]]
    ) -> list[dict[str, np.ndarray]]:
        """Run the source on each chain's first feed (chains from :meth:`backward`) and map its outputs
        through ``contracts``; feeds are mapped forward except across steps that derive theirs backwards."""
        results = []
        for outputs, chain in zip(self.run_source([chain[0] for chain in chains]), chains):
            feed = dict(chain[0])
            for i, c in enumerate(contracts):
                extra = self.intermediates(c, feed)
                outputs = c.map_outputs(outputs, feed, extra)
                feed = dict(chain[i + 1]) if c.derived_inputs else c.map_feed(feed, extra)
            results.append(outputs)
        return results

    def backward(self, contracts: Sequence[IOContract], feed: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Feeds before each of ``contracts`` and after the last, from a feed after the last one.
        Source inputs a step removed (unused, so any value does) come from the source feed."""
        chain = [dict(feed)]
        for c in reversed(contracts):
            chain.insert(0, c.unmap_feed(chain[0]))
        for spec in self.specs:
            chain[0].setdefault(spec.name, self.feed[spec.name])
        return chain

    def _start(
        self, candidate: Model, contracts: Sequence[IOContract]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Feed and expected outputs to map forward from, and the first contract to map them through:
        the source's, or those right after the last step that derives its feed backwards (its random
        data is made for the model after it and the reference is the source run on the derived feed)."""
        last = max((i for i, c in enumerate(contracts) if c.derived_inputs), default=-1)
        if last < 0:
            return dict(self.feed), dict(self.reference()), 0
        later = contracts[last + 1 :]
        specs = [InputSpec(_unrename(s.name, later, "in"), s.dtype, s.dims) for s in graph_inputs(candidate.proto)]
        sizes = self.sizes_for(specs, contracts[: last + 1])
        feed = make_feed(specs, self.config, sizes.dims(), domains=self.domains_for(candidate, later))
        chain = self.backward(contracts[: last + 1], feed)
        return chain[-1], self.replay(contracts[: last + 1], [chain])[0], last + 1

    def check(
        self, candidate: Model, contracts: Sequence[IOContract], tol: Tolerance, name: str = "the candidate model"
    ) -> StepCheck:
        """Run ``candidate`` on the source feed mapped through ``contracts``; compare each output
        with the reference mapped the same way; then run the last step's probes. ``name`` names
        ``candidate`` in messages ("the model after passes[2] (to-fp16)")."""
        import numpy as np

        feed, expected, start = self._start(candidate, contracts)
        self.chain = {start: dict(feed)}
        for j, c in enumerate(contracts[start:], start + 1):
            extra = self.intermediates(c, feed)
            feed, expected = c.map_feed(feed, extra), c.map_outputs(expected, feed, extra)
            self.chain[j] = feed
        sizes = self.sizes_for(graph_inputs(candidate.proto), contracts, feed, exact=True)
        self.last = (candidate, feed, sizes)
        try:
            actual = run_model(self.runtime, candidate, [feed], name)[0]
        except SessionLoadError:
            raise  # not a run at a size: the model does not load (the pipeline names the step)
        except VerificationError as exc:
            raise VerificationError(f"{exc}; {sizes.describe()}" if sizes.chosen else str(exc)) from None
        result = StepCheck(device=self.device_line, sizes=sizes.lines())
        produced = [{k: tuple(np.shape(v)) for k, v in actual.items()}]
        if made_static(self.source.proto, candidate.proto, contracts):
            produced += self._at_other_sizes(candidate, contracts, sizes)
        result.outputs += check_interface(self.source.proto, candidate.proto, contracts, produced)
        for name, value in expected.items():
            if name not in actual:
                result.outputs.append(
                    OutputCheck(name, False, Verdict.FAIL, note="output missing from the edited model")
                )
            else:
                result.outputs.append(compare(name, value, actual[name], tol))
        for c in contracts:
            for name in c.added_outputs:
                mapped = name
                for later in contracts[contracts.index(c) + 1 :]:
                    mapped = later.renamed_outputs.get(mapped, mapped)
                if mapped in actual and mapped not in expected:
                    result.outputs.append(
                        OutputCheck(
                            mapped,
                            True,
                            Verdict.OK_NEW,
                            shape=tuple(np.shape(actual[mapped])),
                            note="added output: ran, nothing to compare",
                        )
                    )
        return result

    def _at_other_sizes(
        self, candidate: Model, contracts: Sequence[IOContract], sizes: Sizes
    ) -> list[dict[str, tuple[int, ...]]]:
        """Output shapes of ``candidate`` with every symbol of its inputs at another size (twice
        the check's, or 3 for 1): where an output symbol was made static, whether the model gives
        that size there too. Nothing when it has no symbol or does not run there (its own checks
        say why)."""
        import numpy as np

        specs = graph_inputs(candidate.proto)
        dims = {k: 2 * v if v > 1 else 3 for k, v in sizes.dims().items()}
        if not dims:
            return []
        try:
            feed = make_feed(specs, self.config, dims, 2, self.domains_for(candidate, []))
            out = run_model(self.runtime, candidate, [feed])[0]
        except SurgeonError:
            return []
        return [{k: tuple(np.shape(v)) for k, v in out.items()}]

    def localize(
        self,
        before: Model,
        k: int,
        candidate: Model,
        tol: Tolerance,
        names: tuple[str, str] = ("the source", "the candidate model"),
    ) -> Divergence | None:
        """After a failed check of ``candidate``: where it first diverges from ``before``, the model
        after the first ``k`` contracts of that check (the source when ``k`` is 0); ``names`` name
        both in messages."""
        if self.last is None or self.last[0] is not candidate or k not in self.chain:
            return None
        try:
            return localize(self.runtime, before, self.chain[k], candidate, self.last[1], tol, names=names)
        except SurgeonError as exc:
            return Divergence(failed=str(exc))

    def probe(
        self,
        candidate: Model,
        contracts: Sequence[IOContract],
        step: int,
        tol: Tolerance,
        accept: bool | Sequence[str] = False,
        name: str = "the candidate model",
    ) -> list[OutputCheck]:
        """The probes of step ``step`` (of ``contracts``) on ``candidate``, the model after every
        contract: each sees what :class:`surgeon.verify.contract.ProbeEnv` offers, nothing else.
        ``accept``: the step's ``verify.accept_unproved``; ``name`` names ``candidate`` in messages."""
        env = ProbeEnv(self, candidate, contracts, step, tol, name)
        return run_probes(contracts[step].probes, env, accept)


class ProbeEnv:
    """What a probe may do (the :class:`surgeon.verify.contract.ProbeEnv` protocol, and nothing
    more): make inputs at new sizes for the model right after its step, run that model (through the
    candidate), and run the model before the step (through the source)."""

    def __init__(
        self,
        verifier: Verifier,
        candidate: Model,
        contracts: Sequence[IOContract],
        step: int,
        tol: Tolerance,
        name: str = "the candidate model",
    ) -> None:
        self._verifier = verifier
        self.name = name
        self.candidate = candidate
        self.contracts = contracts
        self.step = step
        self.tol = tol
        later = contracts[step + 1 :]
        specs = graph_inputs(candidate.proto)
        self.specs = [InputSpec(_unrename(s.name, later, "in"), s.dtype, s.dims) for s in specs]
        self.config = verifier.config
        seen = None
        if verifier.last is not None and verifier.last[0] is candidate:
            seen = {_unrename(k, later, "in"): v for k, v in verifier.last[1].items()}
        self.chosen = verifier.sizes_for(self.specs, contracts[: step + 1], seen)
        self._domains = verifier.domains_for(candidate, later)

    @property
    def sizes(self) -> dict[str, int]:
        """The size of every symbol of the model after the step, as the check used it."""
        return self.chosen.dims()

    def make_feed(self, dims: Mapping[str, int], seed_offset: int = 1) -> dict[str, np.ndarray]:
        """Random inputs (names after the step) with some dims set; others as the check chose them."""
        return make_feed(self.specs, self.config, {**self.sizes, **dims}, seed_offset, self._domains)

    def run_after(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        import numpy as np

        mapped = []
        for feed in feeds:
            f = dict(feed)
            for c in self.contracts[self.step + 1 :]:
                f = c.map_feed(f, self._verifier.intermediates(c, f))
            mapped.append(f)
        shapes = "; ".join(", ".join(f"{k} {list(np.shape(v))}" for k, v in f.items()) for f in mapped)
        name = f"{self.name} (at the probe's inputs: {shapes})"
        outs = run_model(self._verifier.runtime, self.candidate, mapped, name)
        later = self.contracts[self.step + 1 :]
        return [{_unrename(k, later, "out"): v for k, v in o.items()} for o in outs]

    def run_before(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Outputs of the model before the step, named as after it, for feeds named as after it."""

        before = self.contracts[: self.step + 1]
        try:
            return self._verifier.replay(before, [self._verifier.backward(before, feed) for feed in feeds])
        except VerificationError as exc:
            raise VerificationError(f"the source, run for the probe's expected outputs, fails: {exc}") from None


def _unrename(name: str, contracts: Sequence[IOContract], kind: str) -> str:
    for c in reversed(contracts):
        back = {new: old for old, new in (c.renamed_inputs if kind == "in" else c.renamed_outputs).items()}
        name = back.get(name, name)
    return name

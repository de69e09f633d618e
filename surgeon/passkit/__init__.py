"""Tooling the passes share: names and lookups, shape inference, constant folding, shape builders.

Layer 4, beside ``surgeon.pass_api``: imports only ``surgeon.verify.contract``/``compare``,
``surgeon.ir`` and ``surgeon.errors``."""

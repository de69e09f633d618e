"""Verification with onnxruntime: config, contracts, comparison, input data, sessions, the verifier.

Layer 3: imports only the layers below (``surgeon.ir``, ``surgeon.errors``)."""

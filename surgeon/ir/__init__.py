"""The model on disk (file side) and in memory (the onnx-graphsurgeon adapter passes edit), external data, saving.

Layer 2: imports only ``surgeon.errors`` and ``surgeon._version``."""

"""Built-in passes, importable as ``surgeon.passes``: one pass per module, registered by name with
``@register_pass``; modules starting with ``_`` are a pass's private helpers. Nothing is imported
here: ``surgeon.pass_api.catalog`` finds the passes by reading these files, and ``get_pass`` imports
only the module of the pass asked for."""

"""``python -m surgeon.cli``: the ``surgeon`` command."""

from __future__ import annotations

import sys

from surgeon.cli import main

sys.exit(main())

"""``python -m admmcompress``: the same as the ``admmcompress`` command."""

import sys

from .cli import main

sys.exit(main())

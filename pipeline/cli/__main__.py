"""``python -m tansaku.pipeline.cli``: the ``tansaku`` command."""

import sys

from . import main

sys.exit(main())

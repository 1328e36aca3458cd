"""``python -m tunnelmesh``: the same as the ``tunnelmesh`` command."""

import sys

from tunnelmesh.cli import main

sys.exit(main())

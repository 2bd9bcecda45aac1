"""``python -m resnetlab.cli``: the same as the ``resnetlab`` command."""

import sys

from . import main

sys.exit(main())

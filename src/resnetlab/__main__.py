"""``python -m resnetlab``: the same as the ``resnetlab`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m codexloop``."""

import sys

from codexloop.main import main

sys.exit(main())

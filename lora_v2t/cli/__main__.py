"""``python -m lora_v2t.cli``: the ``lora-v2t`` command."""

import sys

from . import main

sys.exit(main())

"""`python -m pathtrail.cli ...`: the same as the `pathtrail` command."""

import sys

from pathtrail.cli.main import main

sys.exit(main())

"""`python -m bridge` is the same as the `mail2sms` console command."""

import sys

from bridge.cli import main

sys.exit(main())

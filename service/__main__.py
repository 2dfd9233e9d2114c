"""`python -m service ...` is `hubspot-webhooks ...`."""

import sys

from service.cli import main

sys.exit(main())

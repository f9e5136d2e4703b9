import sys

from simdex.clients.cli import main

sys.exit(main())

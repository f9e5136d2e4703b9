import sys

from simdex.cli.main import main

sys.exit(main())

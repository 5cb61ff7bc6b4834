import sys

from archbench.cli.main import main

sys.exit(main())

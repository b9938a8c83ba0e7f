import sys

from dsvae.cli import main

sys.exit(main())

import sys

from tapengine.cli import main

sys.exit(main())

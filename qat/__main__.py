import sys

from qat.cli import main

sys.exit(main())

import sys

from drmime_batch.cli import main

sys.exit(main())

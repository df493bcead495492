import sys

from vvm.sweep.summary import main

sys.exit(main())

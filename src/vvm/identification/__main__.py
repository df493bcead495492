import sys

from vvm.identification.table import main

sys.exit(main())

import sys

from vvm.joint.joint_pass import main

sys.exit(main())

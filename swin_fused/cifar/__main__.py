import sys

from swin_fused.cifar.cli import main

sys.exit(main())

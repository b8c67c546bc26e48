import sys

from resultlog.cli import main

sys.exit(main())

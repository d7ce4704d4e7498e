import sys

from convocationsd.daemon.main import main

sys.exit(main())

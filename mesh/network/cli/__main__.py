import sys

from mesh.network.cli import main

sys.exit(main())

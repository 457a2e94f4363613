import sys

from waferllm.cli import main

sys.exit(main())

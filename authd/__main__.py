"""Run the command line as `python -m authd`."""

from authd.cli import main

raise SystemExit(main())

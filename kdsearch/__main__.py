from kdsearch.cli import main

raise SystemExit(main())

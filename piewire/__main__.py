from piewire.cli import main

raise SystemExit(main())

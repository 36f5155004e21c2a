from emsan.cli.main import main

raise SystemExit(main())

from compacs.cli import main

raise SystemExit(main())

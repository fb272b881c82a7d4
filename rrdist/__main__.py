from rrdist.cli import main

raise SystemExit(main())

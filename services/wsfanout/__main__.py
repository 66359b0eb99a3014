from services.wsfanout.app import main

raise SystemExit(main())

from services.ingest.app import main

raise SystemExit(main())

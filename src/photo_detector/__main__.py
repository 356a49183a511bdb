from photo_detector.cli import main

raise SystemExit(main())

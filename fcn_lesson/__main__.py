from fcn_lesson.cli import main

raise SystemExit(main())

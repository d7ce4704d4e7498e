"""``python -m convocationsd.testing`` runs the fake OpenRouter (the only tool in this package)."""

from convocationsd.testing.fake_openrouter import main

raise SystemExit(main())

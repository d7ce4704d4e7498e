"""``python -m tests.helpers.short_idle_daemon [daemon arguments]``: the real daemon, whose HTTP idle timeout
(http_app.IDLE_TIMEOUT, a constant and not a setting: nobody needs another) is cut from 10 s to 1 s, so that a
test of it waits one second rather than ten."""

import sys

IDLE_TIMEOUT = 1.0

if __name__ == "__main__":
    from convocationsd.daemon import http_app
    from convocationsd.daemon.main import main

    http_app.IDLE_TIMEOUT = IDLE_TIMEOUT
    sys.exit(main())

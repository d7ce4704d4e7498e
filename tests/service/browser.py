"""A person's browser, inside the container: opens the authorize URL, presses a button, follows redirects.

Run as the person (the daemon's callback checks that the browser's connection belongs to its own user),
with Debian's python3 and the standard library only: it stands for the browser, not for the project.
Prints the final status, URL and page text.

Usage: python3 browser.py AUTH_URL [approve|deny]
"""

from __future__ import annotations

import sys
import urllib.parse
import urllib.request
from html.parser import HTMLParser


class Forms(HTMLParser):
    """Each form's action, its named inputs and the ids of its buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str], list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}, []))
        elif self.forms and tag == "input" and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")
        elif self.forms and tag == "button":
            self.forms[-1][2].append(a.get("id", ""))


def main(url: str, button: str = "approve") -> int:
    opener = urllib.request.build_opener()  # follows redirects, turning a POST's 302 into a GET like a browser
    with opener.open(url, timeout=30) as page:
        parser = Forms()
        parser.feed(page.read().decode())
    form = next((f for f in parser.forms if button in f[2]), None)
    if form is None:
        print(f"no {button!r} button on {url}", file=sys.stderr)
        return 1
    action, fields, _ = form
    data = urllib.parse.urlencode(fields).encode()
    with opener.open(urllib.parse.urljoin(url, action), data=data, timeout=60) as answer:
        print(answer.status)
        print(answer.url)
        print(answer.read().decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))

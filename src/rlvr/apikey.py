"""An API key from the environment: read once, checked, and scrubbed from every text that is shown.

A server may echo the key back (in an error body, cut short, JSON-escaped, URL-quoted), and httpx
quotes an illegal header value whole, so masking the raw key in a text that was already cut misses
it (issue 21: a key ending in a newline was printed once per failed request). Here the key is
stripped and validated before any request, and `scrub_secret` masks every form it can take,
including a run of its first or last `MIN_LEAK_CHARS` characters, before the text is cut.
"""

from __future__ import annotations

import json
import os
import urllib.parse


class APIKeyError(ValueError):
    """The key in the environment cannot be sent; the message never shows it."""



MIN_LEAK_CHARS = 8
"""a run of at least this many characters of the key (its start or its end, as a server or a cut
leaves it) is masked as well as the whole key"""


def read_api_key(env: str) -> str | None:
    """The key in `$env`, stripped of surrounding whitespace (a secret file's trailing newline would
    make httpx raise `Illegal header value b'Bearer sk-...\\n'`, printing the key); None when unset or
    empty. Raises APIKeyError, without showing the key, when whitespace or a character that is
    not printable ASCII is left inside it (no HTTP header can carry it)."""
    key = (os.environ.get(env) or "").strip()
    for i, char in enumerate(key):
        if char.isspace() or not 32 < ord(char) < 127:
            what = "whitespace" if char.isspace() else "a character that is not printable ASCII"
            raise APIKeyError(f"${env} holds {what} at position {i + 1} of the {len(key)}-character key "
                                  "(the key is not shown); export the key alone, e.g. "
                                  f"export {env}=\"$(tr -d '[:space:]' < keyfile)\"")
    return key or None


def key_forms(key: str) -> list[str]:
    """The ways a key can appear in error text: raw, repr-escaped (str and bytes), JSON-escaped
    (also with `\\/`), URL-quoted; longest first."""
    forms = {key, repr(key)[1:-1], repr(key.encode("utf-8", "backslashreplace"))[2:-1],
             json.dumps(key)[1:-1], json.dumps(key)[1:-1].replace("/", "\\/"),
             urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}
    return sorted(forms, key=len, reverse=True)


def scrub_secret(text: str, key: str | None) -> str:
    """`text` with every form of `key` (`key_forms`) masked as "***", and every run of at least
    `MIN_LEAK_CHARS` characters that starts or ends one (a key cut short by a server). The spans are
    all found in the original text, then merged, so one form's partial match cannot hide another's."""
    if not key or not text:
        return text
    spans: list[tuple[int, int]] = []
    for form in key_forms(key):
        spans += _runs(text, form)
        spans += [(len(text) - end, len(text) - start) for start, end in _runs(text[::-1], form[::-1])]
    pieces, last = [], 0
    for start, end in sorted(spans):
        if start > last or not pieces:
            pieces += [text[last:start], "***"]
        last = max(last, end)
    return "".join(pieces) + text[last:]


def _runs(text: str, form: str) -> list[tuple[int, int]]:
    """(start, end) of each run of `text` that starts like `form` for at least MIN_LEAK_CHARS
    characters (the whole of a shorter `form`) and continues like it as far as it goes."""
    head, spans, i = form[:MIN_LEAK_CHARS], [], 0
    while (j := text.find(head, i)) >= 0:
        n = len(head)
        while n < len(form) and j + n < len(text) and text[j + n] == form[n]:
            n += 1
        spans.append((j, j + n))
        i = j + 1
    return spans

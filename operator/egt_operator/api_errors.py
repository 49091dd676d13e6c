"""What an API server's refusal says, for the operator and the CLI alike."""

from __future__ import annotations

import json
from typing import Any


def api_message(error: Any) -> str:
    """The API server's own message (its Status body's), else the HTTP reason, of an ApiException."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error.reason)


def refused_for_good(error: Any) -> bool:
    """A 4xx that a repeat of the same request would get again: invalid, forbidden (over quota, a
    policy webhook), not found. 409 (exists: adopted) and 429 (throttled) are not."""
    return error.status is not None and 400 <= error.status < 500 and error.status not in (409, 429)

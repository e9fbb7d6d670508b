"""The small forms people and clients post without a token (``/auth/token``, ``/admin/login``)
and the console's forms: application/x-www-form-urlencoded, read within a bound of their own.

Starlette's ``request.form()`` reads a body of any size (only each field is bounded), past
``SIP_HUB_MAX_BODY_BYTES``; these forms hold an id, a secret, a scope, a name: a few KB at
most. So they are read raw (``wire.read_raw``, a 413 past the bound) and parsed here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from ..errors import BadRequest
from .wire import read_raw

FORM_MAX_BYTES = 64 * 1024
FORM_MAX_FIELDS = 64


async def read_form(request: Request) -> list[tuple[str, str]]:
    """The form's fields in order (a field sent twice is there twice: the caller decides);
    PayloadTooLarge past ``FORM_MAX_BYTES`` (or the hub's own body limit, if lower),
    BadRequest for more than ``FORM_MAX_FIELDS`` fields or text that is not UTF-8."""
    limit = min(FORM_MAX_BYTES, request.app.state.settings.max_body_bytes)
    raw = await read_raw(request, limit)
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                         max_num_fields=FORM_MAX_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("The form is not UTF-8 (percent-encoded or not)") from None
    except ValueError:  # (parse_qsl: "Max number of fields exceeded")
        raise BadRequest(f"The form has more than {FORM_MAX_FIELDS} fields") from None

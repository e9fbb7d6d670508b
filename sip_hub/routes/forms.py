"""Reading application/x-www-form-urlencoded bodies within a bound: the small forms people
and clients post without a token (``/auth/token``, ``/admin/login``), the console's forms,
and the parameters of POST [type]/_search.

Starlette's ``request.form()`` reads a body of any size (only each field is bounded), past
``SIP_HUB_MAX_BODY_BYTES``, and ignores Content-Encoding. So forms are read raw
(``wire.read_raw``: a 413 past the bound, a 415 for a content coding) and parsed here. The
token and console forms hold an id, a secret, a scope, a name: a few KB at most.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from ..errors import BadRequest
from .wire import read_raw

FORM_MAX_BYTES = 64 * 1024
FORM_MAX_FIELDS = 64


async def read_form(request: Request, max_bytes: int = FORM_MAX_BYTES,
                    max_fields: int = FORM_MAX_FIELDS) -> list[tuple[str, str]]:
    """The form's fields in order (a field sent twice is there twice: the caller decides);
    PayloadTooLarge past ``max_bytes`` (or the hub's own body limit, if lower),
    UnsupportedMediaType for a content coding, BadRequest for more than ``max_fields``
    fields or text that is not UTF-8."""
    limit = min(max_bytes, request.app.state.settings.max_body_bytes)
    raw = await read_raw(request, limit)
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                         max_num_fields=max_fields, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("The form is not UTF-8 (percent-encoded or not)") from None
    except ValueError:  # (parse_qsl: "Max number of fields exceeded")
        raise BadRequest(f"The form has more than {max_fields} fields") from None

"""Text that PostgreSQL can store. It refuses the NUL character (U+0000) in text columns and in jsonb strings, so
an input holding one fails at the query, as a server error. Every way in (the API's query, form and JSON body, the
ingest body, the pages' filters) checks its text here first and refuses it with the field's name instead."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from django.core.exceptions import BadRequest

NUL = "\x00"
NUL_MESSAGE = "holds the NUL character (\\u0000), which cannot be stored; remove it"
_JSON_NUL = b"\\u0000"  # the only way JSON can carry NUL: a raw NUL byte is not valid JSON


class NulRefused(BadRequest, ValueError):
    """Inputs holding NUL; `fields` names each (a query parameter, a form field, a body's dotted path). Raised in a
    page, Django answers it with the 400 page (runs.views.errors), which shows this message."""

    def __init__(self, fields: list[str]):
        self.fields = fields
        super().__init__("; ".join(f"{field}: {NUL_MESSAGE}" for field in fields))


def _shown(name: Any) -> str:
    return str(name).replace(NUL, "\\u0000")


def nul_fields(value: Any, where: str = "") -> list[str]:
    """The dotted paths of the strings in `value` (a JSON-like document; dict keys included) that hold NUL."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                found.append(path or "body")
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{_shown(key)}" if path else _shown(key)
                if isinstance(key, str) and NUL in key:
                    found.append(child_path)
                stack.append((child, child_path))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item))
    return sorted(found)


def params_nul_fields(params: Any, where: str = "") -> list[str]:
    """The parameters of a QueryDict (a query string or a posted form) whose name or any value holds NUL."""
    prefix = f"{where}." if where else ""
    return [
        f"{prefix}{_shown(key)}"
        for key in params
        if NUL in key or any(isinstance(v, str) and NUL in v for v in params.getlist(key))
    ]


def json_nul_fields(body: bytes) -> list[str]:
    """The dotted paths of a JSON body's strings that hold NUL; [] at once for the usual body without one (a byte
    search), and for a body that is not JSON (its parser refuses it)."""
    if _JSON_NUL not in body:
        return []
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    return nul_fields(doc)


def refuse_nul(fields: Iterable[str]) -> None:
    found = list(fields)
    if found:
        raise NulRefused(found)


def refuse_nul_params(params: Any) -> None:
    """A page's query string or posted form, refused (NulRefused, a 400) when a parameter holds NUL."""
    refuse_nul(params_nul_fields(params))

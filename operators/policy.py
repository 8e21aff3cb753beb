"""What a run's conf may do to a pod: nothing but carry inert values to allowed places.

Kubernetes expands ``$(VAR)`` in a container's ``command``, ``args`` and env values from the
container's environment — the secret-backed ``GEMINI_API_KEY`` included — and turns ``$$``
into ``$``. The operator escapes every ``$`` of the rendered pod (:func:`escape_dollars`), so
Kubernetes hands the process exactly the text the templates rendered; local pod mode undoes
the escape with the same rules (:func:`expand_like_kubernetes`), so both modes run one argv.

The deployment may also restrict which URI prefixes (``*_uri`` params) and which
``openai:`` target endpoints a conf names (:func:`check_conf_policy`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

OPENAI_PREFIX = "openai:"


class ConfPolicyError(ValueError):
    """A conf value the deployment does not allow; deterministic, never worth a retry."""


def escape_dollars(text: str) -> str:
    """``text`` escaped so that Kubernetes' variable expansion returns it unchanged."""
    return text.replace("$", "$$")


def expand_like_kubernetes(text: str, lookup: Callable[[str], str | None]) -> str:
    """Expand ``$(NAME)`` and ``$$`` exactly as the kubelet does for command, args and env.

    A port of Kubernetes' ``third_party/forked/golang/expansion.Expand``: ``$$`` gives ``$``,
    ``$(NAME)`` gives ``lookup(NAME)`` or stays as written when ``lookup`` returns None, and any
    other ``$`` is kept.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1:]
            if rest[0] == "$":  # escaped operator
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:  # incomplete reference: kept as written
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    value = lookup(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = close + 1
            else:  # a lone operator and the character after it
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


# -- what a conf may name --------------------------------------------------------------------------
def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _normalize(uri: str) -> str:
    """A comparable form: local paths normalized, URIs without ``.``/``..`` segments (refused)."""
    if _is_local(uri):
        path = uri.removeprefix("file://")
        return posixpath.normpath(path) if path else path
    scheme, _, rest = uri.partition("://")
    if any(part in (".", "..") for part in rest.split("/")):
        raise ConfPolicyError(f"{uri!r} has '.' or '..' path segments; give the URI without them")
    return f"{scheme.lower()}://{rest}".rstrip("/")


def _under(value: str, prefix: str) -> bool:
    return value == prefix or value.startswith(prefix.rstrip("/") + "/")


def uri_allowed(uri: str, prefixes: Iterable[str]) -> bool:
    """Whether ``uri`` lies under one of ``prefixes`` (whole path segments, after normalizing)."""
    value = _normalize(uri)
    return any(_under(value, _normalize(prefix)) for prefix in prefixes)


def endpoint_allowed(url: str, endpoints: Iterable[str]) -> bool:
    """Whether ``url`` has the scheme and host:port of an allowed endpoint and lies under its path."""
    got = urlsplit(url)
    for endpoint in endpoints:
        want = urlsplit(endpoint)
        if (got.scheme.lower(), got.netloc.lower()) != (want.scheme.lower(), want.netloc.lower()):
            continue
        if _under(posixpath.normpath(got.path or "/"), posixpath.normpath(want.path or "/")):
            return True
    return False


def check_conf_policy(params: Mapping[str, Any], *, allowed_uri_prefixes: Iterable[str] = (),
                      allowed_target_endpoints: Iterable[str] = ()) -> None:
    """Refuse a conf that names a URI or target endpoint the deployment does not allow.

    Every string param whose name ends in ``_uri`` must lie under one of
    ``allowed_uri_prefixes``; a ``target_model`` of the form ``openai:URL#MODEL`` must name one
    of ``allowed_target_endpoints``. An empty list allows anything.

    :raises ConfPolicyError: with a message naming the param, its value and what is allowed.
    """
    prefixes = tuple(allowed_uri_prefixes)
    endpoints = tuple(allowed_target_endpoints)
    if prefixes:
        for name, value in sorted(params.items()):
            if not (name.endswith("_uri") and isinstance(value, str)):
                continue
            try:
                allowed = uri_allowed(value, prefixes)
            except ConfPolicyError as e:
                raise ConfPolicyError(f"{name}: {e}") from None
            if not allowed:
                raise ConfPolicyError(
                    f"{name} {value!r} is outside the URI prefixes this deployment allows "
                    f"({', '.join(prefixes)}; VLMPROBE_ALLOWED_URI_PREFIXES)")
    target = params.get("target_model")
    if endpoints and isinstance(target, str) and target.startswith(OPENAI_PREFIX):
        url = target.removeprefix(OPENAI_PREFIX).partition("#")[0]
        if not endpoint_allowed(url, endpoints):
            raise ConfPolicyError(
                f"target_model endpoint {url!r} is not one this deployment allows "
                f"({', '.join(endpoints)}; VLMPROBE_ALLOWED_TARGET_ENDPOINTS)")

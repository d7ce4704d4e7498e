"""OpenRouter's official Python SDK (``openrouter`` on PyPI, in the test extra) as the other side of the fake.

The SDK's pydantic models are generated from OpenRouter's OpenAPI spec, so here they stand for OpenRouter:
the fake's answers must parse under them with nothing missing and nothing invented, and the daemon's exchange
request must validate under the SDK's request model (the ``fake`` fixtures hand :func:`exchange_body_problem`
to the fake, which runs it on every exchange). Problems name fields and reasons, never values: an exchange
body holds a code and a verifier.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openrouter
from openrouter import OpenRouter
from openrouter.operations import ExchangeAuthCodeForAPIKeyRequestBody
from openrouter.utils import BackoffStrategy, RetryConfig
from pydantic import BaseModel, ValidationError

SDK_VERSION: str = openrouter.VERSION
# The SDK retries 5xx with backoff for up to an hour by default; a test wants each answer once.
NO_RETRIES = RetryConfig("none", BackoffStrategy(1, 1, 1.0, 1), False)


def _where(loc: tuple[Any, ...]) -> str:
    # pydantic puts union branches in loc as long type descriptions; only field names and indexes say where.
    return ".".join(str(part) for part in loc if isinstance(part, int) or str(part).isidentifier())


def validation_problems(error: ValidationError) -> list[str]:
    """One line per field: where and why, without the input (a code, a verifier or a key)."""
    seen: dict[str, str] = {}
    for item in error.errors(include_input=False, include_url=False):
        seen.setdefault(_where(item["loc"]) or "(body)", item["msg"])
    return [f"{where}: {why}" for where, why in seen.items()]


def unknown_fields(sent: Any, known: Any, path: str = "") -> list[str]:
    """Fields of ``sent`` that the model's own dump ``known`` does not have, at any depth."""
    if isinstance(sent, dict) and isinstance(known, dict):
        found = []
        for name, value in sent.items():
            where = f"{path}.{name}" if path else str(name)
            found += [where] if name not in known else unknown_fields(value, known[name], where)
        return found
    if isinstance(sent, list) and isinstance(known, list):
        return [
            f for i, (s, k) in enumerate(zip(sent, known, strict=False)) for f in unknown_fields(s, k, f"{path}.{i}")
        ]
    return []


def shape_problems(model: type[BaseModel], body: Any, *, strict: bool = False) -> list[str]:
    """What keeps ``body`` from being exactly a ``model``: validation errors (a required field missing, a wrong
    type, a null where the spec allows none) and fields the model does not know."""
    try:
        with warnings.catch_warnings():  # the SDK warns on every parse of a field the spec marks deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            parsed = model.model_validate(body, strict=strict)
    except ValidationError as e:
        return validation_problems(e)
    known = parsed.model_dump(mode="json", by_alias=True)
    return [f"{where}: not in the SDK's model" for where in unknown_fields(body, known)]


def required_fields(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items() if field.is_required()}


def nullable_fields(model: type[BaseModel], valid: dict[str, Any]) -> set[str]:
    """The fields of ``model`` that may be null, found by nulling each one of a ``valid`` body in turn."""
    return {name for name in valid if not shape_problems(model, {**valid, name: None})}


def exchange_body_problem(body: Any) -> str | None:
    """The fake's ``check_exchange``: the body must validate strictly (``code_challenge_method`` exactly
    ``S256`` or ``plain``, not any string the SDK would let through) and hold no field the model lacks."""
    problems = shape_problems(ExchangeAuthCodeForAPIKeyRequestBody, body, strict=True)
    if not problems:
        return None
    return f"the exchange body does not match OpenRouter SDK {SDK_VERSION}'s request model: " + "; ".join(problems)


@contextlib.asynccontextmanager
async def sdk_client(base_url: str, key: str | None = None) -> AsyncIterator[OpenRouter]:
    """The SDK pointed at ``base_url`` (the fake), without retries and without the environment: no proxy,
    and no ``OPENROUTER_API_KEY`` (the SDK reads it when given no key; callers clear it, see the tests)."""
    with httpx.Client(trust_env=False, timeout=10) as sync_http:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            yield OpenRouter(
                api_key=key,
                server_url=base_url + "/api/v1",
                client=sync_http,  # unused, but the SDK would make one that reads the environment
                async_client=http,
                retry_config=NO_RETRIES,
            )

"""OpenRouter's own example answers, as its spec and its official SDK's spec carry them, for the daemon to parse.

The values are transcribed from the ``example:`` entries of OpenRouter's OpenAPI spec (data, not code):
- ``SDK_SPEC``: OpenRouterTeam/python-sdk, ``.speakeasy/out.openapi.yaml`` at commit 00d71ec7 (the spec the
  ``openrouter`` package is generated from), ``GET /key`` and ``POST /auth/keys``. Older than the installed SDK:
  it lacks fields 1.3.x requires, which the daemon must not need either.
- ``API_REFERENCE``: OpenRouter's API reference, "Get current API key" (``/openapi/openapi.yaml get /key``),
  a newer example with ``allowed_data_regions`` and ``free_model_daily_requests``.
The complete shape of the installed SDK is the fake's own answer (``fake_openrouter.key_data``), which
tests/integration/test_fake_openrouter_sdk.py holds to the SDK's models.
"""

from __future__ import annotations

import copy
from typing import Any

KEY_SDK_SPEC: dict[str, Any] = {
    "data": {
        "byok_usage": 17.38,
        "byok_usage_daily": 17.38,
        "byok_usage_monthly": 17.38,
        "byok_usage_weekly": 17.38,
        "creator_user_id": "user_2dHFtVWx2n56w6HkM0000000000",
        "expires_at": "2027-12-31T23:59:59Z",
        "include_byok_in_limit": False,
        "is_free_tier": False,
        "is_management_key": False,
        "is_provisioning_key": False,
        "label": "sk-or-v1-au7...890",
        "limit": 100,
        "limit_remaining": 74.5,
        "limit_reset": "monthly",
        "rate_limit": {"interval": "1h", "note": "This field is deprecated and safe to ignore.", "requests": 1000},
        "usage": 25.5,
        "usage_daily": 25.5,
        "usage_monthly": 25.5,
        "usage_weekly": 25.5,
    }
}

KEY_API_REFERENCE: dict[str, Any] = {
    "data": {
        **KEY_SDK_SPEC["data"],
        "allowed_data_regions": ["global", "europe", "us"],
        "free_model_daily_requests": {"limit": 50, "remaining": 38, "used": 12},
    }
}

EXCHANGE_SDK_SPEC_REQUEST: dict[str, Any] = {
    "code": "auth_code_abc123def456",
    "code_challenge_method": "S256",
    "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
}
EXCHANGE_SDK_SPEC: dict[str, Any] = {"key": "OPENROUTER_API_KEY_EXAMPLE", "user_id": "user_2yOPcMpKoQhcd4bVgSMlELRaIah"}

# What the daemon shows of the key examples above (account.summary): the label is a masked key, so it is not shown.
SUMMARY_OF_EXAMPLES: dict[str, Any] = {
    "label": "(unnamed key)",
    "usage": 25.5,
    "limit": 100,
    "limit_remaining": 74.5,
    "valid": True,
    "message": None,
    "readable": True,
}


def with_nulls(data: dict[str, Any], nullable: set[str]) -> dict[str, Any]:
    """``data`` with every field the spec lets be null set to null."""
    return {name: None if name in nullable else copy.deepcopy(value) for name, value in data.items()}


def with_new_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with fields OpenRouter might add one day: of every JSON type, one of them named like a field
    the daemon reads, one level down."""
    return {
        **copy.deepcopy(data),
        "spend_alerts": [{"threshold_usd": 80, "channel": "email"}],
        "credits": {"usage": "not this one", "limit": None},
        "region": "eu-west",
        "is_trial": False,
        "quota_tokens": 123456789012,
        "retired_at": None,
    }

"""convocationsd: links a person's OpenRouter account to Convocations (OAuth PKCE daemon)."""

__version__ = "0.1.0"

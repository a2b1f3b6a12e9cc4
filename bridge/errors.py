"""The bridge's exceptions.

    BridgeError
    ├── ConfigError            a bad config value; names the key path (cli.py: exit 2)
    ├── StatusError            a request the bridge refuses; carries a numbered status
    │                          (see statuses.py) that is mailed back to the sender
    ├── StoreError             the durable store failed; SMTP answers 451, nothing is lost
    └── ProviderError          raised by providers only; never a bare bool
        ├── TransientError     not delivered *for sure*; retry later, maybe elsewhere
        │                      (retry_after: seconds the provider asked us to wait)
        ├── AmbiguousError     the request may have gone out (read timeout after sending,
        │                      HTTP 500, unparsable answer); never retried blindly
        └── PermanentError     refused for good (bad number, bad key, no credit there)
            └── RecipientRefused   the recipient opted out (STOP) or is barred: no other
                                   provider may be tried, the number goes on the opt-out
                                   list (source ``provider``)

Only ``cli.py`` turns these into exit codes.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A config value is missing or wrong; ``path`` names the key (``smtp.listen``)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class ConfigErrors(ConfigError):
    """Several config problems found at once (``check-config`` prints each)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("", "; ".join(str(e) for e in errors))


class StatusError(BridgeError):
    """A request refused with a numbered status (``code``) and optional details.

    ``details`` are substituted into the catalogue text (e.g. 104's ``used`` and
    ``available``); ``note`` is extra free text for the reply (which numbers were invalid).
    """

    def __init__(self, code: int, note: str = "", **details: object) -> None:
        self.code = code
        self.note = note
        self.details = details
        super().__init__(f"status {code}" + (f": {note}" if note else ""))

    def text(self, language: str = "fr") -> str:
        """The status text in ``language`` (``fr`` or ``en``), details filled in."""
        from bridge.statuses import status_text

        return status_text(self.code, language, **self.details)


class StoreError(BridgeError):
    """The store could not commit; the caller must not acknowledge the message."""


class ProviderError(BridgeError):
    """Base of the errors a provider raises from ``send()``."""

    def __init__(self, message: str, *, provider: str = "", code: str | int | None = None) -> None:
        self.provider = provider
        self.code = code
        super().__init__(message)


class TransientError(ProviderError):
    """Definitely not delivered this time; safe to retry here or at another provider."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        code: str | int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, code=code)
        self.retry_after = retry_after


class AmbiguousError(ProviderError):
    """The provider may or may not have accepted the SMS; do not re-send blindly."""


class PermanentError(ProviderError):
    """The provider refused this SMS for good; retrying cannot help."""


class RecipientRefused(PermanentError):
    """The provider refuses because of the *recipient*: opted out (STOP) or barred.

    Trying the next provider would text someone who said STOP, so the route stops here.
    ``opted_out`` is True when the provider says the person unsubscribed (the dispatcher
    adds the number to the opt-out list), False for a number barred for another reason.
    """

    def __init__(self, message: str, *, provider: str = "", code: str | int | None = None,
                 opted_out: bool = True) -> None:
        super().__init__(message, provider=provider, code=code)
        self.opted_out = opted_out

"""Typed errors shared by every layer, so callers can react without knowing the backend."""


class ZeroRecError(Exception):
    """Base class of every error ZeroRec raises on purpose."""


class InvalidInputError(ZeroRecError, ValueError):
    """The caller gave something malformed (bad key, bad event, bad CSV row)."""


class NotFoundError(ZeroRecError, KeyError):
    """The named thing (object, user, model version) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class BackendUnavailableError(ZeroRecError, ConnectionError):
    """A server (Kafka, Redis, S3) did not answer within its bounded timeout."""


class DeliveryError(ZeroRecError):
    """The event bus did not acknowledge a produced record; it must not be reported as sent."""


class IntegrityError(ZeroRecError):
    """An artefact failed verification (checksum mismatch, missing file, bad manifest)."""

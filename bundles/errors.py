"""One exception tree for the bundle format, grouped by whose fault it is.

Every refusal a user can meet has its own class and a one-line message that a field
technician understands. Callers map `BundleError` to exit code 1 and print `str(err)`.
"""

from __future__ import annotations


class BundleError(Exception):
    """Base of every refusal raised by the `bundles` package."""


# --- the file is not a well-formed bundle ---------------------------------------------------


class FormatError(BundleError):
    """The file is not a well-formed Satchel bundle."""


class TruncatedBundleError(FormatError):
    """The file ends before the bundle does."""


class MemberLayoutError(FormatError):
    """Members are missing, extra, misnamed or out of order."""


class UnsafeMemberError(FormatError):
    """A member is a link, a device, or has a path that could escape the staging directory."""


class MalformedJSONError(FormatError):
    """A JSON document does not parse, or is not canonical where it must be."""


class ManifestError(FormatError):
    """The manifest parses but does not describe a valid bundle."""


class UnknownFormatVersionError(ManifestError):
    """The manifest declares a format version this software does not know."""


class MissingFieldError(ManifestError):
    """A required manifest field is absent."""


class WrongTypeError(ManifestError):
    """A manifest field has the wrong type or an invalid value."""


class UnexpectedFieldError(ManifestError):
    """A manifest object has a field the format does not define."""


class TooLargeError(FormatError):
    """A document or member is larger than the configured limit."""


class CaptureError(FormatError):
    """A capture file (field inputs kept by a device, `bundles/captures.py`) is malformed,
    too large, or its meta is invalid."""


# --- the bundle is well formed but not trustworthy ------------------------------------------


class TrustError(BundleError):
    """The bundle or trust document is not signed by keys this device trusts."""


class SignatureError(TrustError):
    """A signature is malformed or does not verify."""


class UnknownKeyError(TrustError):
    """Signed by a key that the trust root does not list for that role."""


class ThresholdError(TrustError):
    """Fewer valid signatures than the role's threshold."""


class RootRotationError(TrustError):
    """A new trust root is not a valid successor of the trusted one."""


class ExpiredError(TrustError):
    """A manifest or trust document is past its expiry time."""


# --- the payload does not match what was signed ---------------------------------------------


class PayloadError(BundleError):
    """A payload differs from what the signed manifest declares."""


class PayloadSizeError(PayloadError):
    """A payload is larger or smaller than declared (for example a decompression bomb)."""


class PayloadHashError(PayloadError):
    """A payload's sha256 differs from the signed manifest."""


class DeltaBaseError(PayloadError):
    """A delta payload's base file is missing, or differs from the one its patch was made
    against (bundles/delta.py)."""


# --- an encrypted bundle (bundles/crypt.py) -------------------------------------------------


class DecryptionError(BundleError):
    """An encrypted bundle cannot be decrypted here."""


class NotARecipientError(DecryptionError):
    """The bundle's data key is wrapped for other recipients only."""


class WrappedKeyError(DecryptionError):
    """keys.json is malformed, or the key it wraps for us does not match the signed commitment."""


# --- what a device is told to install ------------------------------------------------------


class OfferError(BundleError):
    """An install offer (an entry of a check-in answer) is malformed."""


# --- keys on the admin side -----------------------------------------------------------------


class KeyFileError(BundleError):
    """A key file cannot be read: wrong format, wrong passphrase, or not an Ed25519 key."""


class StagingError(BundleError):
    """The unpack target is unusable (not empty, not a directory, or a write failed)."""


# --- a USB stick that is not what it seems ---------------------------------------------------


class StickLinkError(BundleError):
    """A path on a USB stick is a symbolic link: nothing is read or written through it."""


# --- settings files and environment overrides (agent and manager alike) ----------------------


class ConfigError(BundleError, ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names the key and
    where it was given (file, environment variable or option). Nothing has been changed."""

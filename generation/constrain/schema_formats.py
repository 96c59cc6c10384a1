"""Formats as exact regular languages (date, ipv4, ipv6, uuid, uri, uri-reference, email, duration,
json-pointer, relative-json-pointer; time and date-time without leap seconds as a sound subset)."""

from __future__ import annotations

from collections.abc import Callable

from . import regex as R
from .regex import VRe

_DATE = (
    r"(?:[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|[0-9]{4}-(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|[0-9]{4}-(?:0[13578]|1[02])-31"
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_TIME_NOLEAP = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
# RFC 3986
_UNRES = r"[A-Za-z0-9\-._~]"
_PCT = r"%[0-9A-Fa-f]{2}"
_SUBD = r"[!$&'()*+,;=]"
_PCHAR = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|[:@])"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|:)*"
_IPVFUTURE = rf"[vV][0-9A-Fa-f]+\.(?:{_UNRES}|{_SUBD}|:)+"
_HOST = rf"(?:\[(?:{_IPV6}|{_IPVFUTURE})\]|{_IPV4}|(?:{_UNRES}|{_PCT}|{_SUBD})*)"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_SEGMENT_NZ_NC = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|@)+"
_PATH_ABEMPTY = rf"(?:/{_SEGMENT})*"
_PATH_ABSOLUTE = rf"/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"
_PATH_ROOTLESS = rf"{_SEGMENT_NZ}(?:/{_SEGMENT})*"
_PATH_NOSCHEME = rf"{_SEGMENT_NZ_NC}(?:/{_SEGMENT})*"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_HIER = rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_PATH_ROOTLESS}|)"
_URI = rf"{_SCHEME}:{_HIER}(?:\?{_QUERY})?(?:#{_QUERY})?"
_RELATIVE = (
    rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_PATH_NOSCHEME}|)(?:\?{_QUERY})?(?:#{_QUERY})?"
)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
# RFC 5321 sub-domain = Let-dig [Ldh-str] (the ABNF has no length limit; those are in section 4.5.3.1)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_EMAIL = (
    rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")"
    rf"@(?:{_LABEL}(?:\.{_LABEL})*|\[{_IPV4}\]|\[IPv6:{_IPV6}\])"
)
_DUR_SEC = r"[0-9]+S"
_DUR_MIN = rf"[0-9]+M(?:{_DUR_SEC})?"
_DUR_HOUR = rf"[0-9]+H(?:{_DUR_MIN})?"
_DUR_TIME = rf"T(?:{_DUR_HOUR}|{_DUR_MIN}|{_DUR_SEC})"
_DUR_DAY = r"[0-9]+D"
_DUR_MONTH = rf"[0-9]+M(?:{_DUR_DAY})?"
_DUR_YEAR = rf"[0-9]+Y(?:{_DUR_MONTH})?"
_DUR_DATE = rf"(?:{_DUR_DAY}|{_DUR_MONTH}|{_DUR_YEAR})(?:{_DUR_TIME})?"
_DURATION = rf"P(?:{_DUR_DATE}|{_DUR_TIME}|[0-9]+W)"
_JSON_POINTER = r"(?:/(?:[^~/]|~[01])*)*"

FORMAT_SOURCES: dict[str, Callable[[], str]] = {
    "date": lambda: _DATE,
    # seconds 00-59 only: the exact RFC 3339 language (leap second 60 only at 23:59 UTC, i.e. tied to the
    # offset) needs an ~11k-state automaton; "assert" refuses these two, "subset" uses this sound subset
    "time": lambda: _TIME_NOLEAP,
    "date-time": lambda: f"{_DATE}[Tt]{_TIME_NOLEAP}",
    "ipv4": lambda: _IPV4,
    "ipv6": lambda: _IPV6,
    "uuid": lambda: r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
    "uri": lambda: _URI,
    "uri-reference": lambda: f"(?:{_URI}|{_RELATIVE})",
    "email": lambda: _EMAIL,
    "duration": lambda: _DURATION,
    "json-pointer": lambda: _JSON_POINTER,
    "relative-json-pointer": lambda: rf"(?:0|[1-9][0-9]*)(?:#|{_JSON_POINTER})",
}
#: formats whose grammar language is a sound subset only (no leap seconds): formats="subset" allows them
SUBSET_FORMATS = frozenset({"time", "date-time"})
#: formats asserted exactly under formats="assert"
FORMATS = tuple(f for f in FORMAT_SOURCES if f not in SUBSET_FORMATS)
#: known formats that cannot be asserted exactly: refused (or dropped with a warning)
UNSUPPORTED_FORMATS = frozenset(
    {"hostname", "idn-hostname", "idn-email", "iri", "iri-reference", "uri-template", "regex"}
)
_format_cache: dict[str, VRe] = {}


def format_vre(name: str) -> VRe:
    if name not in _format_cache:
        _format_cache[name] = R.parse_pattern(FORMAT_SOURCES[name](), search=False)
    return _format_cache[name]

"""Formats as exact regular languages (date, ipv4, ipv6, uuid, uri, uri-reference, iri, iri-reference,
uri-template, email, duration, json-pointer, relative-json-pointer) and, for `formats="subset"`, sound
subsets of the formats whose exact language is not regular or too large (time and date-time without leap
seconds; hostname, idn-hostname and idn-email without A-labels)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

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
# RFC 3987 (IRIs): RFC 3986 with `ucschar` among the unreserved characters and `iprivate` in queries.
# A sound subset: the Basic Multilingual Plane's ucschar/iprivate only (with the supplementary planes,
# neither the class nor its complement is small enough for the engine's terminals)
_UCS = "\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef"
_IPRIVATE = "\ue000-\uf8ff"
_IUNRES = rf"[A-Za-z0-9\-._~{_UCS}]"
_IPCHAR = rf"(?:{_IUNRES}|{_PCT}|{_SUBD}|[:@])"
_IHOST = rf"(?:\[(?:{_IPV6}|{_IPVFUTURE})\]|{_IPV4}|(?:{_IUNRES}|{_PCT}|{_SUBD})*)"
_IAUTHORITY = rf"(?:(?:{_IUNRES}|{_PCT}|{_SUBD}|:)*@)?{_IHOST}(?::[0-9]*)?"
_ISEGMENT = rf"{_IPCHAR}*"
_ISEGMENT_NZ = rf"{_IPCHAR}+"
_ISEGMENT_NZ_NC = rf"(?:{_IUNRES}|{_PCT}|{_SUBD}|@)+"
_IPATH_ABEMPTY = rf"(?:/{_ISEGMENT})*"
_IPATH_ABSOLUTE = rf"/(?:{_ISEGMENT_NZ}(?:/{_ISEGMENT})*)?"
_IQUERY = rf"(?:{_IPCHAR}|[/?{_IPRIVATE}])*"
_IFRAGMENT = rf"(?:{_IPCHAR}|[/?])*"
_IRI = (
    rf"{_SCHEME}:(?://{_IAUTHORITY}{_IPATH_ABEMPTY}|{_IPATH_ABSOLUTE}|{_ISEGMENT_NZ}(?:/{_ISEGMENT})*|)"
    rf"(?:\?{_IQUERY})?(?:#{_IFRAGMENT})?"
)
_IRELATIVE = (
    rf"(?://{_IAUTHORITY}{_IPATH_ABEMPTY}|{_IPATH_ABSOLUTE}|{_ISEGMENT_NZ_NC}(?:/{_ISEGMENT})*|)"
    rf"(?:\?{_IQUERY})?(?:#{_IFRAGMENT})?"
)
# RFC 6570 (URI templates; literals as corrected by erratum 6937, which admits the apostrophe)
_UT_LITERAL = rf"(?:[!#$&-;=?-\[\]_a-z~{_UCS}{_IPRIVATE}]|{_PCT})"
_UT_VARCHAR = rf"(?:[A-Za-z0-9_]|{_PCT})"
_UT_VARSPEC = rf"{_UT_VARCHAR}(?:\.?{_UT_VARCHAR})*(?::[1-9][0-9]{{0,3}}|\*)?"
_UT_EXPR = rf"\{{[+#./;?&=,!@|]?{_UT_VARSPEC}(?:,{_UT_VARSPEC})*\}}"
_URI_TEMPLATE = rf"(?:{_UT_LITERAL}|{_UT_EXPR})*"


def _ldh_label(n: int, letters: str = "A-Za-z") -> str:
    """An LDH label of 1..n characters (no hyphen first or last) that does not have hyphens in both its
    3rd and 4th positions: that rules out A-labels ("xn--") and reserved labels, whose validity depends
    on Punycode and IDNA2008 and is not a regular language."""
    an, ldh = f"[{letters}0-9]", f"[{letters}0-9-]"
    return rf"(?:{an}(?:{ldh}{{0,2}}{an})?|{an}{ldh}(?:{an}{ldh}|-{an}){ldh}{{0,{n - 5}}}{an})"


def _hostname_subset(letters: str = "A-Za-z") -> str:
    """RFC 1123 host names without A-labels, in shapes that keep within the 253-character total (exactly,
    a ~30k-state automaton): up to 3 labels, 4 labels (the last at most 61 characters), or 5 to 8 labels
    of at most 30 characters each."""
    lab = partial(_ldh_label, letters=letters)
    return (
        rf"(?:(?:{lab(63)}\.){{0,2}}{lab(63)}|(?:{lab(63)}\.){{3}}{lab(61)}"
        rf"|(?:{lab(30)}\.){{4,7}}{lab(30)})"
    )


# RFC 6531: the local part may use any non-ASCII character (atext and qtext); the domain is ASCII here
_NON_ASCII = "\x80-\U0010ffff"
_IATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]"
_IDN_EMAIL = (
    rf"(?:{_IATEXT}+(?:\.{_IATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*\")"
    rf"@(?:{_ldh_label(63)}(?:\.{_ldh_label(63)})*|\[{_IPV4}\]|\[IPv6:{_IPV6}\])"
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
    "iri": lambda: _IRI,
    "iri-reference": lambda: f"(?:{_IRI}|{_IRELATIVE})",
    "uri-template": lambda: _URI_TEMPLATE,
    "email": lambda: _EMAIL,
    "duration": lambda: _DURATION,
    "json-pointer": lambda: _JSON_POINTER,
    "relative-json-pointer": lambda: rf"(?:0|[1-9][0-9]*)(?:#|{_JSON_POINTER})",
    # sound subsets (SUBSET_FORMATS)
    "hostname": _hostname_subset,
    "idn-hostname": _hostname_subset,
    "idn-email": lambda: _IDN_EMAIL,
}
_LEAP = (
    "the exact language (RFC 3339 leap seconds, valid only at 23:59:60 UTC and so tied to the offset) is "
    "too large an automaton; formats='subset' accepts it without leap seconds"
)
_IDNA = (
    "the exact language (A-labels must be valid Punycode of IDNA2008 labels) is not regular; "
    "formats='subset' accepts it without A-labels"
)
_BMP = (
    "the exact language admits supplementary-plane characters (ucschar, iprivate): too large a character "
    "class for the engine's terminals; formats='subset' accepts it with Basic Multilingual Plane characters"
)
#: formats whose grammar language is a sound subset only, with why: formats="subset" allows them
SUBSET_FORMATS: dict[str, str] = {
    "time": _LEAP,
    "date-time": _LEAP,
    "hostname": _IDNA + " and up to 8 labels",
    "idn-hostname": "the exact language (IDNA2008 U-labels: contextual and Bidi rules, Punycode) is not "
    "regular; formats='subset' accepts ASCII host names without A-labels, up to 8 labels",
    "iri": _BMP,
    "iri-reference": _BMP,
    "uri-template": _BMP,
    "idn-email": "the exact domain language (IDNA2008 U-labels) is not regular; formats='subset' accepts "
    "non-ASCII local parts with an ASCII domain without A-labels",
}
#: formats asserted exactly under formats="assert"
FORMATS = tuple(f for f in FORMAT_SOURCES if f not in SUBSET_FORMATS)
#: known formats that cannot be asserted exactly: refused (or dropped with a warning)
UNSUPPORTED_FORMATS = frozenset({"regex"})
_format_cache: dict[str, VRe] = {}


def format_vre(name: str) -> VRe:
    if name not in _format_cache:
        _format_cache[name] = R.parse_pattern(FORMAT_SOURCES[name](), search=False)
    return _format_cache[name]

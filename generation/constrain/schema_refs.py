"""`$id` / `$ref` / `$dynamicRef` resolution within one document: base URIs, JSON pointers, anchors, and
the dynamic anchors that `$dynamicRef` looks up along the dynamic scope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

from .schema_keywords import LIST_KW, MAP_KW, SINGLE_KW
from .schema_values import Refuse

_DEFAULT_BASE = "https://ragloom.invalid/schema.json"


def _join(base: str, ref: str) -> str:
    if ref.startswith("#"):
        return base.split("#")[0] + ref
    if ":" in ref.split("/")[0]:
        return ref
    return urljoin(base, ref)


class Registry:
    def __init__(self, root: Any, resources: Mapping[str, Any] | None = None) -> None:
        self.resources: dict[str, Any] = {}
        self.anchors: dict[str, Any] = {}
        self.dyn_anchors: dict[str, Any] = {}  # "resource#name" -> the schema with that $dynamicAnchor
        self.dyn_resources: set[str] = set()  # resources that define a $dynamicAnchor
        self.has_dynamic_ref = False
        self.base_of: dict[int, str] = {}
        self.root_base = _DEFAULT_BASE
        self.resources[_DEFAULT_BASE] = root
        self._walk(root, _DEFAULT_BASE)
        # other documents the schema may refer to, by their URIs (what a validator's registry holds)
        for uri, doc in (resources or {}).items():
            base = urldefrag(uri)[0]
            self.resources.setdefault(base, doc)
            self._walk(doc, base)

    def _walk(self, s: Any, base: str) -> None:
        if not isinstance(s, dict):
            return
        sid = s.get("$id")
        if isinstance(sid, str):
            base = urldefrag(_join(base, sid))[0]
            self.resources.setdefault(base, s)
        self.base_of[id(s)] = base
        for kw in ("$anchor", "$dynamicAnchor"):
            a = s.get(kw)
            if isinstance(a, str):
                self.anchors.setdefault(base + "#" + a, s)
        dyn = s.get("$dynamicAnchor")
        if isinstance(dyn, str):
            self.dyn_anchors.setdefault(base + "#" + dyn, s)
            self.dyn_resources.add(base)
        if "$dynamicRef" in s:
            self.has_dynamic_ref = True
        for k, v in s.items():
            if k in MAP_KW and isinstance(v, dict):
                for vv in v.values():
                    self._walk(vv, base)
            elif k in LIST_KW and isinstance(v, list):
                for vv in v:
                    self._walk(vv, base)
            elif k in SINGLE_KW:
                self._walk(v, base)

    def base(self, s: Any, default: str) -> str:
        return self.base_of.get(id(s), default) if isinstance(s, dict) else default

    def resolve(self, ref: str, base: str) -> tuple[Any, str]:
        full = _join(base, ref)
        uri, frag = urldefrag(full)
        if uri not in self.resources:
            raise Refuse(
                "$ref",
                f"$ref {ref!r} points outside this schema ({uri}); remote references are not supported",
            )
        doc = self.resources[uri]
        if not frag:
            target = doc
        elif frag.startswith("/"):
            target = doc
            cur_base = uri
            for raw in frag[1:].split("/"):
                seg = unquote(raw).replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and seg in target:
                    target = target[seg]
                elif isinstance(target, list) and seg.isdigit() and int(seg) < len(target):
                    target = target[int(seg)]
                else:
                    raise Refuse("$ref", f"$ref {ref!r}: JSON pointer {frag!r} does not resolve")
                if (
                    isinstance(target, dict)
                    and isinstance(target.get("$id"), str)
                    and id(target) not in self.base_of
                ):
                    cur_base = urldefrag(_join(cur_base, target["$id"]))[0]
            return target, self.base_of.get(id(target), cur_base) if isinstance(target, dict) else cur_base
        else:
            target = self.anchors.get(uri + "#" + unquote(frag))
            if target is None:
                raise Refuse("$ref", f"$ref {ref!r}: no anchor {frag!r}")
        return target, self.base(target, uri)

    def resolve_dynamic(self, ref: str, base: str, scope: tuple[str, ...]) -> tuple[Any, str]:
        """`$dynamicRef`: resolved like `$ref`; when that lands on a `$dynamicAnchor` of the fragment's
        name, the outermost resource of the dynamic scope (`scope`: the resources entered on the way
        here, outermost first) that defines a `$dynamicAnchor` of that name wins."""
        try:
            target, tbase = self.resolve(ref, base)
        except Refuse as e:
            raise Refuse("$dynamicRef", e.message.replace("$ref", "$dynamicRef", 1)) from None
        frag = urldefrag(_join(base, ref))[1]
        name = unquote(frag)
        if not frag or frag.startswith("/") or not isinstance(target, dict):
            return target, tbase
        if target.get("$dynamicAnchor") != name:
            return target, tbase
        for res in scope:
            t = self.dyn_anchors.get(res + "#" + name)
            if t is not None:
                return t, self.base(t, res)
        return target, tbase

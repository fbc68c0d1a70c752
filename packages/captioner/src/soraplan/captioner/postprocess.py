"""Clean generated captions: drop boilerplate openings and whitespace artefacts."""

from __future__ import annotations

import re

_SUBJECT = r"(?:the|this|these|a)\s+(?:short\s+)?(?:video|clip|footage|scene|sequence|frames?|images?|animation)"
_VERB = (
    r"(?:shows|showcases|depicts|features|captures|presents|displays|portrays|illustrates|"
    r"is showing|appears to show|begins with|starts with|opens with)"
)
# Openings that say nothing about the content; tried repeatedly so stacked ones all go.
_BOILERPLATE = [
    re.compile(rf"^{_SUBJECT}\s+{_VERB}\s+(?:that\s+)?", re.I),
    re.compile(rf"^in\s+{_SUBJECT}(?:\s+provided)?\s*[,:]?\s*(?:we\s+(?:can\s+)?see\s+)?", re.I),
    re.compile(r"^(?:here\s+is|this\s+is)\s+(?:a\s+)?(?:detailed\s+)?description(?:\s+of\s+the\s+video)?\s*[:.]\s*", re.I),
    re.compile(r"^(?:sure|certainly|of course)[,!.]\s*", re.I),
]


def clean_caption(text: str) -> str:
    text = text.replace("\u200b", " ").strip().strip('"').strip()
    text = re.sub(r"\s+", " ", text)  # newlines, tabs and runs of spaces
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    changed = True
    while changed:
        changed = False
        for pattern in _BOILERPLATE:
            stripped = pattern.sub("", text, count=1)
            if stripped != text:
                text, changed = stripped.lstrip(" ,:"), True
    return text[:1].upper() + text[1:]

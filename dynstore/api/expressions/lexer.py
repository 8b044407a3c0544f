"""Tokens of DynamoDB's expression language and the syntax errors it reports about them.

Every expression kind (condition, filter, key condition, update, projection) shares one
lexer, as DynamoDB's does: a token is an identifier (a letter, then letters, digits and
underscores: a leading ``_`` is a syntax error there), a ``#name`` or ``:value`` placeholder,
a decimal integer (list indexes), one of ``( ) [ ] , . = <> < <= > >= + -``, or any other
single character, which no grammar accepts and so surfaces as a syntax error at that
character. The text ends with an ``<EOF>`` token of zero width.

A syntax error names the offending token and quotes the source around it, from the start
of the previous token to the end of the next one, whitespace included:
``Syntax error; token: "-", near: "a-b"``.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from dynstore.api.errors import ValidationException

IDENT = "ident"
NAME = "name"  # #placeholder
VALUE = "value"  # :placeholder
NUMBER = "number"
PUNCT = "punct"
EOF = "eof"

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<ident>[A-Za-z][A-Za-z0-9_]*)
  | (?P<name>\#[A-Za-z0-9_]+)
  | (?P<value>:[A-Za-z0-9_]+)
  | (?P<number>[0-9]+)
  | (?P<punct><>|<=|>=|[()\[\],.=<>+\-])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class Token(NamedTuple):
    kind: str
    text: str
    start: int  # offset of the first character in the expression text
    end: int  # offset just past the last character


def tokenize(text: str) -> list[Token]:
    """All tokens of ``text``, whitespace dropped, ending with one EOF token."""
    tokens = []
    append = tokens.append
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind != "ws":
            append(Token(kind, match.group(), match.start(), match.end()))
    append(Token(EOF, "<EOF>", len(text), len(text)))
    return tokens


def invalid(kind: str, message: str) -> ValidationException:
    """The error for a bad expression of ``kind`` (e.g. "ConditionExpression")."""
    return ValidationException(f"Invalid {kind}: {message}")


def syntax_error(kind: str, text: str, tokens: list[Token], index: int) -> ValidationException:
    token = tokens[index]
    start = tokens[index - 1].start if index > 0 else token.start
    end = tokens[index + 1].end if token.kind != EOF else token.end
    return invalid(kind, f'Syntax error; token: "{token.text}", near: "{text[start:end]}"')

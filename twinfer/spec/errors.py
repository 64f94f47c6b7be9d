"""The one error type bad user input raises.

Every message names the field that is wrong and how to fix it, on one line, so
that the CLI can print it and exit with code 2 instead of a traceback.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A scenario, profile or option the user gave is invalid.

    ``field`` is a dotted path such as ``layout.tp``; ``fix`` says what to do.
    """

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}" if field else problem
        if fix:
            text += f" — {fix}"
        super().__init__(text)
        # args rebuild the error (pickling, SimPy re-raising it out of a process)
        self.args = (field, problem, fix)
        self._text = text

    def __str__(self) -> str:
        return self._text


def pydantic_to_spec_error(exc: Exception, prefix: str = "") -> SpecError:
    """Turn the first error of a pydantic ``ValidationError`` into a one-line SpecError."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return SpecError(prefix, str(exc))
    # In a union (a length is a number or a distribution), the member the input was
    # not meant for reports a type mismatch; the other member's error is the useful one.
    mismatch = {"int_type", "int_parsing", "model_type", "dict_type", "model_attributes_type"}
    err = next((e for e in errors if e.get("type") not in mismatch), errors[0])
    loc = [str(p) for p in err.get("loc", ()) if not _is_union_tag(p)]
    field = ".".join(([prefix] if prefix else []) + loc)
    kind = err.get("type", "")
    msg = err.get("msg", "invalid value")
    if kind == "extra_forbidden":
        return SpecError(field, "unknown key", "remove it or check its spelling")
    if kind == "missing":
        return SpecError(field, "required key is missing", "add it")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return SpecError(field, msg + more)


_UNION_TAGS = {"uniform", "hetero", "fa_pool", "kv_sharded",  # layout kinds
               "batch", "poisson", "trace",  # arrival kinds
               "lognormal", "int", "constrained-int"}  # length distributions, plain numbers


def _is_union_tag(part: object) -> bool:
    # pydantic puts the discriminator tag ('uniform', 'poisson', ...) or a validator's
    # name ('function-after[...]') in the location of a union member; the user never
    # typed it, so leave it out.
    return part in _UNION_TAGS or (isinstance(part, str) and "[" in part)

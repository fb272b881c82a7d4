"""User-facing errors: the CLI prints any of these as one line, without a traceback."""


class RrdistError(Exception):
    """A mistake the user can fix; the message says how."""


class ConfigError(RrdistError):
    """An invalid setting."""


class DataError(RrdistError):
    """Missing, unreadable or corrupt data."""


class TrainingError(RrdistError):
    """Training cannot go on (for example the loss became NaN)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line (its type when it has no message), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


# Ray wraps worker exceptions in its own types and strings; this marker lets the driver find
# the user-facing line again inside whatever Ray hands back.
MARKER = "[rrdist] "


def find_user_message(exc: BaseException) -> str | None:
    """The RrdistError message carried by `exc` or anything it wraps, if there is one."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RrdistError):
            return str(e).replace(MARKER, "")
        text = str(e)
        if MARKER in text:
            line = text.split(MARKER, 1)[1].splitlines()[0]
            return line.strip()
        for attr in ("__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(v for v in failures.values() if isinstance(v, BaseException))
    return None

"""User-facing errors.

Anything the user can fix (a bad path, an unknown name, an impossible option) raises ``FewlabelError``
with one sentence that says what is wrong and what to do. The CLI prints it as a single line and exits
with status 2; every other exception is a bug and keeps its traceback.
"""


class FewlabelError(Exception):
    """An error caused by the user's input, reported as one readable line."""


def one_line(exc: FewlabelError) -> str:
    """The error's sentence. A ``FewlabelError`` raised in a data-loader worker (e.g. an image that cannot be
    decoded) reaches the main process re-raised with the worker's traceback in its message: keep its last line."""
    text = str(exc)
    if "Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].split("FewlabelError: ", 1)[-1] if lines else text
    return text

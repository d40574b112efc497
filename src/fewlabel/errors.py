"""User-facing errors.

Anything the user can fix (a bad path, an unknown name, an impossible option) raises ``FewlabelError``
with one sentence that says what is wrong and what to do. The CLI prints it as a single line and exits
with status 2; every other exception is a bug and keeps its traceback.
"""


class FewlabelError(Exception):
    """An error caused by the user's input, reported as one readable line."""

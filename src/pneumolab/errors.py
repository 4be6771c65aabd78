"""The one exception type that reaches users as a message instead of a traceback."""


class PneumolabError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    The CLI prints the message as one paragraph and exits non-zero; nothing
    else should catch it.
    """

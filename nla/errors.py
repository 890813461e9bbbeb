"""The errors that are the user's input, reported by the ``nla`` command as one line rather than a traceback."""


class UserError(Exception):
    """A mistake in what the user gave nla: a file, a line, a value or a setting, named in the message."""


class ConfigError(UserError, ValueError):
    """A setting with a value nla cannot use."""

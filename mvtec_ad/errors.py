"""The errors a user can cause and fix: the CLI prints their message alone (one line, exit 2).

    UserError               anything the user passed or has on disk; the message says what to do
      DataError             dataset folders, images, masks, splits of the data
      ConfigError           options and config files (a value out of range, a bad YAML file)
      BackboneError         backbones and their weights
      CheckpointError       checkpoints that are missing, unreadable or of another detector
      DependencyError       an optional package that is not installed (the message names the extra)

Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user passed; its message names the file or option and the fix."""


class DataError(UserError, ValueError):
    """A dataset folder, image or mask that cannot be used as it is."""


class ConfigError(UserError, ValueError):
    """An option or config file with a value that cannot work."""


class BackboneError(UserError, RuntimeError):
    """A backbone or its weights could not be built; the message says what to pass instead."""


class CheckpointError(UserError):
    """A checkpoint that is missing, cannot be read, or does not fit the model it is loaded into."""


class DependencyError(UserError, ImportError):
    """An optional package is missing; the message says which extra to install."""


def find_user_error(error: BaseException | None) -> UserError | None:
    """The UserError behind `error` (jsonargparse and Lightning wrap them), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None

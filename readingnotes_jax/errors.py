"""The one exception type for bad user input."""


class UserError(Exception):
  """Bad input (data, config, checkpoint, shape): one line naming the problem and the fix.

  Command-line entry points print it as a single line and exit with code 2.
  """

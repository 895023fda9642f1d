"""The one exception type for bad user input, and the argparse parser that raises it."""
import argparse


class UserError(Exception):
  """Bad input (data, config, checkpoint, shape): one line naming the problem and the fix.

  Command-line entry points print it as a single line and exit with code 2.
  """


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose bad flags raise `UserError` (the command prints its one error line and
  exits with code 2) instead of printing the usage block."""

  def error(self, message):
    raise UserError(message)

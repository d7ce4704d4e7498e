"""convctl, the command line: argument parsing, commands, doctor and service install."""

"""Command-line helpers below the command files: upstream DLRM's and the MLET fork's flags, help text, debug output."""

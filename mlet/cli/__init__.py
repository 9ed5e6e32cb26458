"""Command-line helpers below the command files (``dlrm_mlet.py``, ``data_utils.py``, ``checkpoint.py``)."""

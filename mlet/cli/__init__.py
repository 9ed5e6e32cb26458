"""Command-line helpers below the command files (``dlrm_mlet.py``, ``data_utils.py``, ``checkpoint.py``): upstream
DLRM's and the MLET fork's flags, model-reduction flags, help text, debug output."""

"""The paper reproduction: the grid, the sweep, its summary and the analyses behind the explanations."""

"""Scenario scripts (one scenario a file) and their runner; filled by the runtime issue."""

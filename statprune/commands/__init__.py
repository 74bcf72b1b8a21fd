"""CLI command groups (thin: parse, call library functions, print)."""

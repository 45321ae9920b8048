"""Operator commands behind the CLI: doctor, tail, export/import, erase. Each works on the composition root's
public parts (``runtime.Connections``, ``Runtime``) and the stores, never on a driver directly."""

"""Privacy: client-side DP-SGD with a ledger each client enforces, central DP and SecAgg+.

Not built yet (tracked in issue 4); this package exists so the layout is stable.
"""

__all__: list[str] = []

"""A confined, stateful Python kernel for the code interpreter (`pip install functionary[interpreter]`).

See `functionary.sandbox.kernel` for what is enforced and how; `Sandbox.report` says it at run time.
"""
from functionary.sandbox.kernel import (
    DATA_DIR,
    ExecutionResult,
    Sandbox,
    SandboxError,
    SandboxReport,
    truncate,
)

__all__ = ["DATA_DIR", "ExecutionResult", "Sandbox", "SandboxError", "SandboxReport", "truncate"]

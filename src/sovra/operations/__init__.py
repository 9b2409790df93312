"""The operation engine: workers claim operations with a lease and run their steps."""

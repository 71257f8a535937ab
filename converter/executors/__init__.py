"""Where conversions run: concurrent.futures-style executors (a local process pool today)."""

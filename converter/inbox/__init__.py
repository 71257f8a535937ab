"""The inbox pipeline: scanning the inbox, SQLite state, the completeness tracker and its pure rules, passthrough checks for formats that are already fast, and publishing/archiving."""

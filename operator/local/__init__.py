"""Local mode: the same engine and act layer on this machine, with processes instead of a cluster."""

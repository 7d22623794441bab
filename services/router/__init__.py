"""The weighted canary router: routing table, HTTP proxy, table sources, guard."""

"""Source: fetch a Git revision, cache checkouts, verify signatures."""
